"""Prompts of the GCA evaluation (our own wording of METHOD 4.3 and 4.7), filled with string.Template.

In the core because the scene engine (coser/scene.py) and the judge (coser/judge.py) are shared by
gca_evaluation/main.py and the web app; gca_evaluation/prompts.py re-exports them.
"""
from __future__ import annotations

from string import Template

# Appended to every character agent's system prompt (METHOD 4.3 step 4).
CONCISE = ("Speak the way a real person talks in conversation: briefly and naturally, not at length. "
           "Keep your response within 60 words.")

# llama*/step* models tend to write several characters' turns at once (METHOD 4.3 step 4).
NAME_PREFIX = Template("Begin your reply with \"$name: \" and speak only as $name, never as any other character.")

RAG_WRAP = Template("<begin of background information>\n\n$knowledge\n\n<end of background information>\n\n")

# Shown to the judge when the first messages were replayed from the book (--continue_from).
CONTINUE_FROM_NOTE = Template(
    "Note: the first $n messages of the simulated dialogue are copied from the original conversation. "
    "Judge only the content that comes after them.")

DIMENSIONS = ["Storyline Consistency", "Anthropomorphism", "Character Fidelity", "Storyline Quality"]

DIMENSION_BRIEFS = {
    "Storyline Consistency": "whether the storyline and the characters' reactions in the simulated conversation "
                             "agree with those in the original conversation",
    "Anthropomorphism": "whether the characters behave like natural, believable human beings",
    "Character Fidelity": "whether the characters faithfully match how they are portrayed in the book",
    "Storyline Quality": "whether the conversation is logically consistent and develops well as a narrative",
}

DIMENSION_CRITERIA = {
    "Storyline Consistency": Template("""\
### Storyline Consistency
- Type: Storyline Consistency
  * The characters' emotions, attitudes or behaviour (their reactions) differ from those in the original conversation."""),
    "Anthropomorphism": Template("""\
### Anthropomorphism
- Type: Self-identity
  * Shows no initiative or goals of its own
  * Makes no independent decisions
  * Has no clear likes or dislikes
  * Acts like a helpful AI assistant (too verbose, too helpful, preachy, moralising, submissive or easily persuaded) when that is not the character's nature

- Type: Emotional Depth
  * Reactions are shallow and rigid, without psychological complexity
  * Says every thought and feeling outright instead of leaving things in the subtext

- Type: Persona Coherence
  * Personality traits or emotional patterns are inconsistent or shift too quickly

- Type: Social Interaction
  * Does not grasp what other people think or feel
  * Answers mechanically, ignoring the context
  * Shows poor social skills"""),
    # Only the main characters are judged here; $major_characters names them.
    "Character Fidelity": Template("""\
### Character Fidelity
(Judge only the main characters: $major_characters.)
- Type: Character Language
  * Vocabulary, expressions or tone do not suit the character's traits or social and educational background

- Type: Knowledge & Background
  * Fails to show the knowledge, background or experience specific to the character
  * Reveals something the character could not yet know at this point of the story

- Type: Personality & Behavior
  * Emotions, thoughts, behaviour, values, beliefs or decisions that conflict with the character's personality and background
  * Interest in topics that mean nothing to the character
  * Traits that contrast with the character as shown in the original conversation
  * Reactions that contrast with the original conversation in a similar situation (count such a flaw under both Storyline Consistency and Character Fidelity)

- Type: Relationship & Social Status
  * Interacts in a way that does not fit the character's background, relationships or social standing"""),
    "Storyline Quality": Template("""\
### Storyline Quality
- Type: Flow & Progression
  * The conversation progresses unnaturally or shows no meaningful development
  * Dialogue is verbose or redundant
  * Repeats points other characters made or information already given
  * A character mechanically repeats its own words or phrases; the more repetition, the higher the severity (up to 10)

- Type: Logical Consistency
  * Statements or viewpoints that contradict one another on the facts"""),
}

JUDGE_PROMPT = Template("""\
You are a literary critic whose speciality is judging characters and dialogue. You will be given a simulated conversation set in a plot from $book. Assess it step by step:

1. Study the material provided: the plot background and the situation, the profiles of the main characters ($major_characters), and, for reference, the conversation that actually takes place in the book in this same situation.
2. Evaluate the simulated conversation on $dimension_name, that is, $dimension_brief. Every message of a character is made of speech, actions in parentheses (...) and inner thoughts in square brackets [...]. Inner thoughts are not spoken aloud and the other characters cannot perceive them. The detailed criteria follow below.
$additional_instructions

## Scenario

### Plot Summary
$plot_summary

### Current Scenario
$scenario

## Character Profiles
$character_profiles

## Original Conversation
$original_conversation

## Evaluation Criteria
Find every instance of the following types of flaws in the simulated conversation:

$dimension_criteria

## Scoring Guidelines
1. Identify every instance of a flaw in the simulation.
2. Rate each instance with a severity from 1 to 5 (1 = minor, 3 = moderate, 5 = severe).

## Output Requirements
Reply with JSON only, in exactly this shape:
{
  "$dimension_name": {
    "flaws": [
      {"instance": "<what is wrong, with a short quote>", "type": "<flaw type>", "severity": <integer 1-5>}
    ]
  }
}

===Dialogue Content===
""")


def judge_prompt(dimension: str, book: str, plot_summary: str, scenario: str, character_profiles: str,
                 original_conversation: str, major_characters: list, additional_instructions: str) -> str:
    """The judge's system prompt for one dimension (the simulated dialogue is the user message)."""
    majors = ", ".join(major_characters)
    criteria = DIMENSION_CRITERIA[dimension].substitute(major_characters=majors)
    return JUDGE_PROMPT.substitute(
        book=book, plot_summary=plot_summary, scenario=scenario, character_profiles=character_profiles,
        original_conversation=original_conversation, major_characters=majors,
        additional_instructions=additional_instructions, dimension_name=dimension,
        dimension_brief=DIMENSION_BRIEFS[dimension], dimension_criteria=criteria)


def judge_schema(dimension: str) -> dict:
    """JSON schema of one judgment, for endpoints that support constrained output."""
    flaw = {"type": "object", "properties": {"instance": {"type": "string"}, "type": {"type": "string"},
                                             "severity": {"type": "integer"}},
            "required": ["instance", "type", "severity"]}
    return {"type": "object", "properties": {dimension: {
        "type": "object", "properties": {"flaws": {"type": "array", "items": flaw}}, "required": ["flaws"]}},
        "required": [dimension]}
