"""System prompts shared by transform (training data), GCA evaluation and chat.

Wording is our own; the structure, the number of variants and the probabilities follow
METHOD.md 3.3/3.4, because the training data's diversity (and the evaluation's fixed
template) is part of the method. All randomness comes from the caller's random.Random so
that a seeded run is reproducible.
"""
from __future__ import annotations

import random
from string import Template
from typing import Optional

ENVIRONMENT = "Environment"
NSP = "NSP"
END_CHAT = "<END CHAT>"
NSP_UNSURE = "random"
CONVERSATION_START = "===Conversation Start===\n\n"
# Literal placeholder that the evaluation's retrieval step replaces (METHOD 4.5).
RAG_PLACEHOLDER = "{retrieved_knowledge}"

# ---- output-format requirements -------------------------------------------------------
OUTPUT_FORMAT_THOUGHTLESS = (
    "Answer with your character's speech and actions only. Write actions in parentheses, "
    "e.g. (your action); everyone in the scene can see them."
)
OUTPUT_FORMAT_THOUGHTFUL = (
    "Answer with your character's thoughts, speech and actions. Write thoughts in square "
    "brackets, e.g. [your thought]; nobody else can see them. Write actions in parentheses, "
    "e.g. (your action); everyone in the scene can see them."
)
OUTPUT_FORMAT_WITH_EXAMPLE = OUTPUT_FORMAT_THOUGHTFUL + (
    " For instance, a thought might be [I must look strong, even though I am frightened "
    "inside.] and an action might be (watches without a word, holding back fear and anger)."
)

# ---- other characters' profiles -------------------------------------------------------
OTHER_PROFILE_SEPARATORS = ["*" * 30 + "\n\n", "*" * 20 + "\n\n", "\n\n", "\n", ""]
OTHER_PROFILE_ENTRY = Template("$sep$name: $profile\n\n")

# ---- fixed template (evaluation) ------------------------------------------------------
FIXED_OPENING = Template("You are playing $character, a character from $book_name.\n\n")
FIXED_PROFILE = Template("===$character's Profile===\n$profile\n\n")
FIXED_SCENARIO = Template("===Current Scenario===\n$scenario\n\n")
FIXED_OTHERS = Template("===Information about the other Characters===\n$block\n\n")
FIXED_THOUGHTS = Template("===Your Inner Thoughts===\n$motivation\n\n")
FIXED_RAG = "===Relevant Background Information===" + RAG_PLACEHOLDER + "\n\n"
FIXED_REQUIREMENTS = Template("===Requirements===\n$output_format\n\n")

# ---- randomized template (training) ---------------------------------------------------
STYLES = ["natural", "=", "#", "*"]
STYLE_WEIGHTS = [0.4, 0.3, 0.2, 0.1]

# Ten role-assignment phrasings, each with and without the book name: 20 openers.
_OPENER_CORES = [
    "You are $who.",
    "Play the part of $who.",
    "Imagine that you are $who.",
    "Think, talk and behave like $who.",
    "Put yourself in the place of $who.",
    "Fully inhabit the character of $who.",
    "You are now role-playing $who.",
    "In this scene you portray $who.",
    "Take on the role of $who.",
    "The role assigned to you is $who.",
]
OPENERS = [Template(Template(core).substitute(who=who) + "\n\n")
           for core in _OPENER_CORES for who in ("$character", "$character from $book_name")]

NATURAL_PROFILE = [
    Template("This is what you should know about $character:\n$profile\n\n"),
    Template("Profile of $character:\n$profile\n\n"),
    Template("Below is a description of $character:\n$profile\n\n"),
    Template("Your character's profile reads:\n$profile\n\n"),
    Template("Here is who $character is:\n$profile\n\n"),
]
NATURAL_SCENARIO_ONLY = [
    Template("The scene you are in:\n$scenario\n\n"),
    Template("Here is the current situation:\n$scenario\n\n"),
    Template("The conversation takes place in this setting:\n$scenario\n\n"),
    Template("Now the scene is as follows:\n$scenario\n\n"),
]
NATURAL_SCENARIO_WITH_PLOT = [
    Template("What has happened in the story so far:\n$background\n\n"
             "The scene you are in now:\n$scenario\n\n"),
    Template("Summary of the plot:\n$background\n\nCurrent situation:\n$scenario\n\n"),
    Template("The current scene:\n$scenario\n\nIt belongs to this part of the story:\n$background\n\n"),
    Template("Setting of the conversation:\n$scenario\n\nBackground of the plot:\n$background\n\n"),
]
NATURAL_OTHERS = [
    Template("These are the other characters in the scene:\n$block\n\n"),
    Template("You will be talking with these characters:\n$block\n\n"),
    Template("What you know about the others present:\n$block\n\n"),
]
NATURAL_THOUGHTS = [
    Template("What is on your mind right now:\n$motivation\n\n"),
    Template("Your inner state at this moment:\n$motivation\n\n"),
    Template("Your private thoughts and aims in this scene:\n$motivation\n\n"),
    Template("Keep in mind what you are feeling and planning:\n$motivation\n\n"),
    Template("Motivation for this conversation:\n$motivation\n\n"),
]
NATURAL_RAG = "Relevant Background Information: " + RAG_PLACEHOLDER + "\n\n"

DECORATORS = {
    "=": ["===$title===", "==$title==", "=$title="],
    "#": ["#$title", "# $title", "## $title", "### $title"],
    "*": ["**$title**", "*$title*", "***$title***"],
}
TITLES_PROFILE = ["Profile", "$character's profile", "About $character"]
TITLES_PLOT = ["Plot summary", "Story so far", "Background of the plot", "What happened before"]
TITLES_SCENARIO = ["Scene", "Current situation", "Setting of the conversation"]
TITLES_OTHERS = ["Other characters", "People in the scene", "Who else is here"]
TITLES_THOUGHTS = ["Inner thoughts", "Your motivation", "State of mind", "What you are thinking"]
TITLE_RAG = "Relevant Background Information"
TITLES_REQUIREMENTS = ["Requirements", "How to respond"]
DECORATED_SECTION = Template("$title\n$content\n\n")

# ---- environment and next-speaker prompts ---------------------------------------------
ENVIRONMENT_ROLES = ["environment model", "environment simulator", "world model", "world simulator"]
ENVIRONMENT_PROMPT = Template("""\
You act as the $role of a role-playing game. Your job is environmental feedback: given what the characters say and do, describe how the world around them changes as a result. This covers:
   - changes to the physical surroundings
   - how bystanders, background characters or crowds respond
   - sounds, weather and shifts in atmosphere
   - any other relevant detail of the surroundings

Make your descriptions vivid enough to set the scene, but never decide what the main characters (namely $major_characters) say or do.

Notes:
- Minor characters and crowds may act and react, provided they are not main characters (namely $major_characters).
- Be brief but telling; usually one to three sentences.
- Pick up on subtle cues in the interaction so the world feels responsive.
- Match the tone, setting and culture of the scenario.

===The scenario is as follows===
$scenario""")

NSP_PROMPT = Template("""\
Your task is to predict who acts next in a role-playing conversation. The next actor is either one of the characters or Environment, the special role that supplies environmental feedback.

Answer with one name from this list: $all_characters. If you cannot tell, answer "$unsure". If the scene should end here, answer "$end_chat".

===The scenario is as follows===
$scenario""")

NSP_OUTPUT_FORMAT = """

===Output Format===
Reply in exactly two parts:
1. Reasoning: why this speaker should act next
2. Next Speaker: exactly one name from the list above"""


def output_format(thoughtless: bool, add_output_example: bool = False) -> str:
    """The requirement text; the worked example only applies when thoughts are on."""
    if thoughtless:
        return OUTPUT_FORMAT_THOUGHTLESS
    return OUTPUT_FORMAT_WITH_EXAMPLE if add_output_example else OUTPUT_FORMAT_THOUGHTFUL


def _other_profiles_block(character: str, others: Optional[dict], rng: random.Random) -> str:
    if not others:
        return ""
    # The separator is drawn whenever the dict is non-empty, even if only the speaker is in it.
    sep = rng.choice(OTHER_PROFILE_SEPARATORS)
    return "".join(OTHER_PROFILE_ENTRY.substitute(sep=sep, name=name, profile=profile)
                   for name, profile in others.items() if name != character)


def _fixed_prompt(character, book_name, profile, scenario, motivation, others_block, add_rag, fmt):
    parts = [FIXED_OPENING.substitute(character=character, book_name=book_name),
             FIXED_PROFILE.substitute(character=character, profile=profile),
             FIXED_SCENARIO.substitute(scenario=scenario)]
    if others_block:
        parts.append(FIXED_OTHERS.substitute(block=others_block))
    if motivation:
        parts.append(FIXED_THOUGHTS.substitute(motivation=motivation))
    parts.append("\n\n")
    if add_rag:
        parts.append(FIXED_RAG)
    parts.append(FIXED_REQUIREMENTS.substitute(output_format=fmt))
    return "".join(parts)


def get_character_prompt(book_name: str, character: str, character_profile: str, background: str,
                         scenario: str, motivation: str, thoughtless: bool = False,
                         other_character_profiles: Optional[dict] = None,
                         exclude_plot_summary: bool = False, fixed_template: bool = False,
                         add_output_example: bool = False, add_rag: bool = False,
                         rng: Optional[random.Random] = None) -> str:
    """System prompt for one character agent (METHOD 3.3).

    fixed_template=True is the evaluation layout; otherwise a randomized training layout.
    rng: every random choice is drawn from it; None means a fresh random.Random(42), so a
    forgotten rng gives a reproducible (if repetitive) prompt instead of hidden global state.
    """
    if rng is None:
        rng = random.Random(42)
    fmt = output_format(thoughtless, add_output_example)
    others_block = _other_profiles_block(character, other_character_profiles, rng)
    if fixed_template:
        return _fixed_prompt(character, book_name, character_profile, scenario, motivation,
                             others_block, add_rag, fmt)

    names = dict(character=character, book_name=book_name)
    style = rng.choices(STYLES, weights=STYLE_WEIGHTS)[0]
    parts = [rng.choice(OPENERS).substitute(names)]
    # Thoughtless prompts leave the requirement out half of the time.
    requirement = rng.choice([fmt, ""] if thoughtless else [fmt, fmt])

    if style == "natural":
        parts.append(rng.choice(NATURAL_PROFILE).substitute(names, profile=character_profile))
        if exclude_plot_summary or rng.random() < 0.5:
            parts.append(rng.choice(NATURAL_SCENARIO_ONLY).substitute(scenario=scenario))
        else:
            parts.append(rng.choice(NATURAL_SCENARIO_WITH_PLOT).substitute(
                scenario=scenario, background=background))
        if others_block:
            parts.append(rng.choice(NATURAL_OTHERS).substitute(block=others_block))
        if motivation:
            parts.append(rng.choice(NATURAL_THOUGHTS).substitute(motivation=motivation))
        if add_rag:
            parts.append(NATURAL_RAG)
        if requirement:
            parts.append(requirement + "\n\n")
        return "".join(parts)

    decorator = Template(rng.choice(DECORATORS[style]))

    def section(titles, content):
        title = Template(rng.choice(titles) if isinstance(titles, list) else titles).substitute(names)
        parts.append(DECORATED_SECTION.substitute(title=decorator.substitute(title=title),
                                                  content=content))

    section(TITLES_PROFILE, character_profile)
    if not exclude_plot_summary and rng.random() < 0.5:
        section(TITLES_PLOT, background)
    section(TITLES_SCENARIO, scenario)
    if others_block:
        section(TITLES_OTHERS, others_block)
    if motivation:
        section(TITLES_THOUGHTS, motivation)
    if add_rag:
        section(TITLE_RAG, RAG_PLACEHOLDER)
    if requirement:
        section(TITLES_REQUIREMENTS, requirement)
    return "".join(parts)


def get_environment_prompt(major_characters: list, scenario: str,
                           rng: Optional[random.Random] = None) -> str:
    """System prompt for the Environment agent (METHOD 3.4); the role label is drawn from rng."""
    if rng is None:
        rng = random.Random(42)
    mains = [c for c in major_characters if c != ENVIRONMENT]
    return ENVIRONMENT_PROMPT.substitute(role=rng.choice(ENVIRONMENT_ROLES),
                                         major_characters=repr(mains), scenario=scenario)


def get_nsp_prompt(all_characters: list, scenario: str, eval_version: bool = False) -> str:
    """System prompt for the next-speaker predictor; the evaluation version asks for
    'Reasoning:' and 'Next Speaker:' (the training version wants a bare name)."""
    prompt = NSP_PROMPT.substitute(all_characters=repr(list(all_characters)), unsure=NSP_UNSURE,
                                   end_chat=END_CHAT, scenario=scenario)
    return prompt + NSP_OUTPUT_FORMAT if eval_version else prompt
