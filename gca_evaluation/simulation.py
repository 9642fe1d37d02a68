"""Multi-agent simulation of one test scene (METHOD 4.3-4.5).

Each speaking character is an actor agent, plus the Environment and the next-speaker predictor
(NSP). Every agent keeps its own message list: its own turns verbatim, everyone else's with the
[inner thoughts] removed and the speaker's name in front. All random choices of a sample (prompt
separators, the Environment role label, fallback speakers) come from one generator seeded by
(seed, book, i_p, i_c), so a sample's outcome does not depend on worker count or order.
"""
from __future__ import annotations

import copy
import random

from coser.prompts import (CONVERSATION_START, END_CHAT, ENVIRONMENT, NSP, RAG_PLACEHOLDER, get_character_prompt,
                           get_environment_prompt, get_nsp_prompt)
from coser.text import (add_speaker_name, append_message, fix_repetition, own_segment, parse_nsp,
                        remove_inner_thoughts)

from . import prompts as P

MAX_ROUNDS = 20
MIN_ROUND_TO_END = 5  # <END CHAT> before this round index counts as an invalid prediction
MAX_TOKENS = 512
_RAG_SECTION = "===Relevant Background Information===" + RAG_PLACEHOLDER + "\n\n"


def sample_key(item: dict) -> str:
    return f"{item['book']}-{item['i_p']}-{item['i_c']}"


def sample_rng(seed: int, item: dict) -> random.Random:
    # A string seed is hashed with SHA-512 by random.seed: stable across processes and PYTHONHASHSEED.
    return random.Random(f"{seed}|{item['book']}|{item['i_p']}|{item['i_c']}")


def _prefix_family(model: str) -> bool:
    return model.lower().startswith(("llama", "step"))


class Agent:
    """One participant: a system prompt, its own view of the conversation, one model."""

    def __init__(self, llm, name: str, model: str, system_prompt: str, retrievers=None, stage: str = "actor"):
        self.llm, self.name, self.model, self.stage = llm, name, model, stage
        self.retrievers = retrievers or []
        prompt = system_prompt.strip("\n")
        special = name in (ENVIRONMENT, NSP)
        if not special:
            prompt += "\n\n" + P.CONCISE + "\n\n"
        # The reference also gave Environment/NSP this instruction; their replies are not
        # "name: text" turns, so we give it to characters only.
        if _prefix_family(model) and not special:
            prompt += P.NAME_PREFIX.substitute(name=name) + "\n\n"
        if not self.retrievers:
            prompt = prompt.replace(_RAG_SECTION, "").replace(RAG_PLACEHOLDER, "")
        # Claude/o1 take the system prompt as a user turn; doing it here (not in the client) keeps
        # the reference's "\n\n" join when the conversation-start turn is appended to it.
        role = "user" if model.lower().startswith(("claude", "o1")) else "system"
        self.messages = [{"role": role, "content": prompt}]
        self.update("user", CONVERSATION_START)

    def update(self, role: str, text: str) -> None:
        append_message(self.messages, role, text)

    def chat(self) -> str:
        messages = self.messages
        if self.retrievers:
            query = "\n\n".join(m["content"] for m in messages[1:][-3:])
            knowledge = "".join(r.rag(query) for r in self.retrievers)
            messages = copy.deepcopy(messages)
            messages[0]["content"] = messages[0]["content"].replace(
                RAG_PLACEHOLDER, P.RAG_WRAP.substitute(knowledge=knowledge))
        reply = self.llm.chat_retry(self.model, messages, max_tokens=MAX_TOKENS, stage=self.stage)
        if self.name == NSP:
            return reply
        if _prefix_family(self.model):
            reply = own_segment(reply, self.name)
        if not self.model.lower().startswith(("gpt", "claude")):
            fixed = fix_repetition(reply)
            if fixed is not None:
                reply = fixed
        return reply


def involved_profiles(item: dict) -> dict:
    """Profile text per non-Environment speaker: plot description + book profile (METHOD 4.3 step 2)."""
    descriptions = {kc.get("name"): kc.get("description") for kc in item["plot"].get("key_characters") or []
                    if isinstance(kc, dict)}
    out = {}
    for c in item["speaking_characters_w_env"]:
        if c == ENVIRONMENT:
            continue
        profile = item["character_profiles"].get(c, "") or ""
        if descriptions.get(c):
            profile = descriptions[c].strip("\n") + "\n\n" + profile.strip("\n")
        profile = profile.strip(" \n")
        if profile:
            out[c] = profile
    return out


def motivation_of(item: dict, character: str, use_motivation: bool) -> str:
    """The reference reads only `motivation`; the published test set stores it as `thought`."""
    for kc in item.get("key_characters") or []:
        if isinstance(kc, dict) and kc.get("name") == character:
            value = kc.get("motivation", "")
            if use_motivation and not value:
                value = kc.get("thought", "")
            return value or ""
    return ""


def simulate(llm, item: dict, opts, rng: random.Random, databases=None) -> dict:
    """Run one scene and return the simulation record (METHOD 1.7).

    opts: actor_model, env_model, nsp_model, continue_from, wo_thought, retrieval, use_motivation.
    databases: character -> list of retrievers (only with retrieval on).
    """
    item = copy.deepcopy(item)
    speaking = item["speaking_characters_w_env"]
    if ENVIRONMENT not in speaking:
        speaking.append(ENVIRONMENT)
    majors = item["major_characters"]
    profiles = involved_profiles(item)
    databases = databases or {}

    agents: dict[str, Agent] = {}
    for name in speaking + [NSP]:
        if name == NSP:
            agents[name] = Agent(llm, name, opts.nsp_model, get_nsp_prompt(speaking, item["scenario"], eval_version=True),
                                 stage="nsp")
        elif name == ENVIRONMENT:
            agents[name] = Agent(llm, name, opts.env_model, get_environment_prompt(majors, item["scenario"], rng=rng),
                                 stage="environment")
        else:
            prompt = get_character_prompt(
                item["book"], name, profiles.get(name, ""), item["plot"].get("summary", ""), item["scenario"],
                motivation_of(item, name, opts.use_motivation), thoughtless=opts.wo_thought,
                other_character_profiles=profiles, exclude_plot_summary=True, fixed_template=True,
                add_output_example="coser" not in opts.actor_model.lower(), add_rag=bool(opts.retrieval), rng=rng)
            agents[name] = Agent(llm, name, opts.actor_model, prompt, retrievers=databases.get(name), stage="actor")

    dialogues = item.get("dialogues") or []
    log: list[dict] = []
    current = speaking[0]
    for r in range(MAX_ROUNDS):
        if current == END_CHAT:
            break
        replay = r < opts.continue_from and r < len(dialogues)
        if replay:
            # The reference fed line r to whoever was current; the line's own speaker says it here.
            current = dialogues[r]["character"] if dialogues[r]["character"] in agents else current
        for actor in (current, NSP):
            if replay:
                if actor == current:
                    reply = dialogues[r]["message"]
                else:
                    reply = dialogues[r + 1]["character"] if r < len(dialogues) - 1 else END_CHAT
            else:
                reply = agents[actor].chat()
            if actor == NSP:
                predicted = parse_nsp(reply)
                valid = True
                if predicted == END_CHAT and r >= MIN_ROUND_TO_END:
                    current = END_CHAT
                elif predicted in speaking and predicted != current:
                    current = predicted
                else:
                    valid = False
                    current = _fallback(rng, majors, speaking, current)
                log.append({"role": NSP, "content": predicted})
                nsp = agents[NSP]
                if valid:
                    nsp.update("assistant", reply)
                else:
                    nsp.update("assistant", predicted)
                    nsp.update("user", nsp.messages[0]["content"])
            else:
                log.append({"role": actor, "content": reply})
                shown = add_speaker_name(remove_inner_thoughts(reply, eval_mode=True), actor)
                for name, agent in agents.items():
                    if name == actor:
                        agent.update("assistant", reply)
                    else:
                        agent.update("user", shown)
    return {"book_title": item["book"], "i_p": item["i_p"], "i_c": item["i_c"], "circumstance": item,
            "simulation": log, "involved_character_profiles": profiles}


def _fallback(rng: random.Random, majors: list, speaking: list, current: str) -> str:
    """A random other speaker, drawn from a sorted list so the draw is reproducible."""
    cands = sorted(set(majors + [ENVIRONMENT]) - {current})
    if not cands:
        cands = sorted(set(speaking) - {current})
    return rng.choice(cands) if cands else current
