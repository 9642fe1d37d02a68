"""Prompts of the construction stage, in our own words (METHOD.md 2.5, 2.11).

Filled with string.Template strict substitution ($name), so the JSON braces in the output
formats reach the model as single braces (the reference sent "{{ }}" literally).
"""
from __future__ import annotations

from string import Template

EXTRACT_PROMPT = Template("""You will read a chunk of the book "$title" by $author and turn it into structured story data. Work through these tasks:

1. Chapter beginnings: find every place in the chunk where a new chapter starts and give that chapter's opening line (its title line) exactly as written.
2. Plots: find the important plots in the chunk. Mark where each one starts and ends by quoting its first sentence and its last sentence exactly, and name the chapter it belongs to. Set "state" to "truncated" when the plot continues past the end of the chunk, otherwise to "finished". You may also be given plots that the previous chunk left unfinished: continue them with the new text, extending their conversations while keeping their scenario unchanged.
3. For each plot: write a summary, score its prominence from 1 to 100, and list its key characters with their role, thoughts and actions.
4. For each plot, extract its conversations. For each conversation, first write the scenario and the topic, then list the key characters with their name, description and motivation at that moment, then write the dialogue. Rules for the dialogue:
   (i) Stay true to the story and its characters; reuse the book's own lines wherever you can.
   (ii) Be complete: cover the key exchanges, with at least 10 utterances per conversation.
   (iii) Each utterance mixes thought, speech and action: thoughts go in [square brackets] and are invisible to the others, actions go in (parentheses) and are visible. Every utterance begins with a thought.
   (iv) Thoughts are the character's own inner view, shaped by background, personality, values, relationships, motives and goals, and written as a full phrase or clause, never a single adjective or adverb.
   (v) Scene descriptions, atmosphere and sudden events are utterances whose "character" is "Environment"; they never contain a character's deliberate thoughts, observations or actions.
   (vi) Write in the language of the chunk.
5. next_chunk_start: null if the last storyline of the chunk was returned as a truncated plot; otherwise the first sentence of that last storyline.

===Output Format===
Answer with one JSON object:
{
  "chapter_beginnings": [{"beginning_sentence": "exact first line (title) of the chapter"}],
  "plots": [
    {
      "chapter_title": "title of the chapter, or null",
      "first_sentence": "exact first sentence of the plot within this chunk",
      "last_sentence": "exact last sentence of the plot; for a truncated plot, the last sentence of the chunk",
      "prominence": "1-100: how well fans of the book would know this plot",
      "summary": "what happens in the plot, nothing else",
      "key_characters": [{"name": "full name", "description": "about 20 words: who the character is before this plot", "experience": "about 30 words: the character's role, thoughts and behaviour in this plot, and any development"}],
      "conversation": [
        {
          "scenario": "the situation when the conversation starts, as fully as possible, without giving away what the conversation itself reveals",
          "topic": "about 10 words",
          "key_characters": [{"name": "full name", "motivation": "what the character brings into the conversation: stance, feelings, aims, what they want to say or raise"}],
          "dialogues": [{"character": "full name or Environment", "message": "[thought] speech (action)"}]
        }
      ],
      "state": "finished or truncated"
    }
  ],
  "next_chunk_start": "first sentence of the last storyline, or null"
}
Continuations of unfinished plots come first in "plots", then the new plots.

===Requirements===
1. Follow the JSON format exactly.
2. IMPORTANT: escape every double quote inside a string value, above all in text copied from the book.
3. Use each character's full name, without titles.
4. Stay faithful to the story: no plots from outside this text, prefer the original dialogue, and where the book has no explicit dialogue, write dialogue that follows the plot closely.

===Input===
==Book title==
$title

==Author==
$author

==Chunk of Book Content==
$chunk

==Truncated plot from previous chunk (to be finished)==
$truncated_plots
""")

ENHANCE_PROMPT = Template("""Enrich the setting and the characters' motivations for a conversation from $title, so that actors playing it have the background they need.

Steps:
1. Read the plot summary, the character information and the conversation below.
2. Expand the "scenario" with the situational context the actors need, leaving out anything the conversation itself will reveal later.
3. Deepen each character's "motivation" into a full mental and emotional state: feelings, ideas, aims, topics to bring up and information to pass on, consistent with who the character is and what they do in the story.

===Output Format===
{"scenario": "under 200 words", "key_characters": [{"name": "character name", "motivation": "under 100 words"}]}

===Requirements===
1. Follow the format exactly.
2. Escape double quotes inside strings.
3. Keep the character names unchanged.
4. Answer in the language of the input.
5. "key_characters" must contain exactly these characters: $names

===Input Conversation and Background===
$input
""")

NAMES_PROMPT = Template("""Below is a list of names, titles and forms of address taken from a book. Do two things:
1. List the named characters, each once, by their official name (in $language).
2. Map every given name to its official name, or to "impersonal" when it does not refer to one specific named person.

===Output Format===
{"named_characters": ["official name", "..."], "to_official_name": {"given name": "official name or impersonal"}}

===Input===
$names
""")

PROFILE_PROMPT = Template("""Write a concise, narrative-style profile of $name from "$title" that reads as one coherent introduction, like an entry in a character guide, in $language. Weave into flowing prose the character's history, appearance, temperament and driving goals, distinctive traits, relationships with other characters, important experiences and choices, role in the main events, development over the story, and any other essential facts. Focus on what matters most.

Plot summaries and dialogues are given below as reference. Base the profile on what you already know of the book or on this material, and do not invent details you are unsure of.

$plots

Begin your answer with ===Profile===
""")

PROFILE_MARKER = "===Profile==="
