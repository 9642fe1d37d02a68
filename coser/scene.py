"""The scene engine: agents and the round loop of one multi-agent scene (METHOD 4.3-4.5).

Each speaking character is an actor agent, plus the Environment and the next-speaker predictor
(NSP). Every agent keeps its own message list: its own turns verbatim, everyone else's with the
[inner thoughts] removed and the speaker's name in front. All random choices of a sample (prompt
separators, the Environment role label, fallback speakers) come from one generator seeded by
(seed, book, i_p, i_c), so a sample's outcome does not depend on worker count or order.

Two protocols (coser/protocol): `reference` reproduces the reference implementation's requests and
recorded outcomes (PROTOCOL.md 1, 5, 6, 7, 8, 9); `fixed` is this toolkit's improved behaviour.
Used by gca_evaluation/main.py and by the web app (one implementation, so a scene watched live is the
scene the script writes); `on_event(kind, payload)` streams each turn, token by token, as it is produced
and `human_turn(character, state) -> str | None` lets a person speak for a character.
"""
from __future__ import annotations

import copy
import inspect
import random
from typing import Callable, Optional

from coser import gca_prompts as P
from coser import protocol as PR
from coser import runspec as RS
from coser.prompts import (CONVERSATION_START, END_CHAT, ENVIRONMENT, NSP, RAG_PLACEHOLDER, get_character_prompt,
                           get_environment_prompt, get_nsp_prompt)
from coser.text import (add_speaker_name, append_message, fix_repetition, own_segment, parse_nsp,
                        remove_inner_thoughts)

MAX_ROUNDS = 20
MIN_ROUND_TO_END = 5  # <END CHAT> before this round index counts as an invalid prediction
MAX_TOKENS = 512
EMPTY_REASON = f"empty reply after {PR.ATTEMPTS} requests (the endpoint answered with no content)"
_RAG_SECTION = "===Relevant Background Information===" + RAG_PLACEHOLDER + "\n\n"
RAG_WRAP = "<begin of background information>\n\n{knowledge}\n\n<end of background information>\n\n"


def sample_key(item: dict) -> str:
    return f"{item['book']}-{item['i_p']}-{item['i_c']}"


def sample_rng(seed: int, item: dict) -> random.Random:
    # A string seed is hashed with SHA-512 by random.seed: stable across processes and PYTHONHASHSEED.
    return random.Random(f"{seed}|{item['book']}|{item['i_p']}|{item['i_c']}")


def _prefix_family(model: str) -> bool:
    return model.lower().startswith(("llama", "step"))


def _accepts_keep_reasoning(llm) -> bool:
    try:
        return "keep_reasoning" in inspect.signature(llm.chat).parameters
    except (TypeError, ValueError):
        return False


def reference_chat(llm, model: str, messages, max_tokens: int, stage: str, **kw) -> str:
    """The reference retry loop (PROTOCOL 5.1): re-ask only while the reply is exactly '', <think> kept."""
    if _accepts_keep_reasoning(llm):
        kw["keep_reasoning"] = True
    for nth in range(PR.ATTEMPTS):
        text = llm.chat(model, messages, max_tokens=max_tokens, nth_generation=nth, stage=stage, **kw)
        if text != "":
            return text
    return ""


class Agent:
    """One participant: a system prompt, its own view of the conversation, one model."""

    def __init__(self, llm, name: str, model: str, system_prompt: str, retrievers=None, stage: str = "actor",
                 protocol: str = PR.DEFAULT_PROTOCOL, concise: str = "", name_prefix: str = ""):
        self.llm, self.name, self.model, self.stage, self.protocol = llm, name, model, stage, protocol
        self.retrievers = retrievers or []
        special = name in (ENVIRONMENT, NSP)
        if protocol == "reference":
            # 6.2: conciseness for characters; name prefix for every agent of a llama*/step* model.
            prompt = PR.agent_system_prompt(system_prompt, name, model)
        else:
            prompt = system_prompt.strip("\n")
            if not special:
                prompt += "\n\n" + concise + "\n\n"
            # The reference also gave Environment/NSP this instruction; their replies are not
            # "name: text" turns, so we give it to characters only.
            if _prefix_family(model) and not special:
                prompt += name_prefix.replace("$name", name) + "\n\n"
        if not self.retrievers:
            prompt = prompt.replace(_RAG_SECTION, "").replace(RAG_PLACEHOLDER, "")
        # Claude/o1 take the system prompt as a user turn; doing it here (not in the client) keeps
        # the reference's "\n\n" join when the conversation-start turn is appended to it.
        role = "user" if model.lower().startswith(("claude", "o1")) else "system"
        if protocol == "reference":
            role = "user" if PR.system_as_user(model) else "system"
        self.messages = [{"role": role, "content": prompt}]
        self.update("user", CONVERSATION_START)
        self.exhausted = False   # the last chat() got nothing but empty replies until its retries ran out

    def update(self, role: str, text: str) -> None:
        append_message(self.messages, role, text)

    def _request_messages(self):
        messages = self.messages
        if self.retrievers:
            query = "\n\n".join(m["content"] for m in messages[1:][-3:])
            knowledge = "".join(r.rag(query) for r in self.retrievers)
            messages = copy.deepcopy(messages)
            messages[0]["content"] = messages[0]["content"].replace(
                RAG_PLACEHOLDER, RAG_WRAP.format(knowledge=knowledge))
        return messages

    def chat(self, on_token=None) -> str:
        """This agent's next turn. on_token (streaming to a viewer) changes neither request nor cache key."""
        messages = self._request_messages()
        kw = {"on_token": on_token} if on_token is not None else {}
        if self.protocol == "reference":
            reply = reference_chat(self.llm, self.model, messages, MAX_TOKENS, self.stage, **kw)
            self.exhausted = reply == ""
            if self.name == NSP:
                return reply
            return PR.finish_turn(reply, self.name, self.model)
        reply = self.llm.chat_retry(self.model, messages, max_tokens=MAX_TOKENS, stage=self.stage, **kw)
        self.exhausted = not reply.strip()
        if self.name == NSP:
            return reply
        if _prefix_family(self.model):
            reply = own_segment(reply, self.name)
        if not self.model.lower().startswith(("gpt", "claude")):
            fixed = fix_repetition(reply)
            if fixed is not None:
                reply = fixed
        return reply


def involved_profiles(item: dict, protocol: str = PR.DEFAULT_PROTOCOL) -> dict:
    """Profile text per non-Environment speaker: plot description + book profile (METHOD 4.3 step 2).

    When two plot entries carry one name, `reference` uses the first, `fixed` the last (PROTOCOL 11)."""
    entries = [kc for kc in item["plot"].get("key_characters") or [] if isinstance(kc, dict)]
    descriptions = {kc.get("name"): kc.get("description") for kc in entries}
    out = {}
    for c in item["speaking_characters_w_env"]:
        if c == ENVIRONMENT:
            continue
        profile = item["character_profiles"].get(c, "") or ""
        desc = descriptions.get(c)
        if protocol == "reference":
            chosen = PR.alias_entry(entries, c, "simulation")
            desc = chosen.get("description") if chosen else None
        if desc:
            profile = desc.strip("\n") + "\n\n" + profile.strip("\n")
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


def _shown(reply: str, actor: str, protocol: str) -> str:
    if protocol == "reference":
        return PR.shown_to_others(reply, actor)
    return add_speaker_name(remove_inner_thoughts(reply, eval_mode=True), actor)


def simulate(llm, item: dict, opts, rng: random.Random, databases=None,
             on_event: Optional[Callable[[str, dict], None]] = None,
             human_turn: Optional[Callable[[str, dict], Optional[str]]] = None) -> dict:
    """Run one scene and return the simulation record (METHOD 1.7).

    opts: actor_model, env_model, nsp_model, continue_from, wo_thought, retrieval, use_motivation,
    protocol ('reference' when absent). databases: character -> list of retrievers.
    on_event(kind, payload): ("speak", {"round", "role"}) when an agent (or the person) starts a turn,
    ("token", {"round", "role", "text"}) for each streamed piece of it, ("discard", {"round", "role"})
    when a stream broke and is asked again (drop the pieces shown), ("turn", {"round", "role", "content"})
    for every record entry as it is final, then ("end", {"rounds"}). Without on_event nothing streams.
    human_turn(character, state): when it returns a string, that string is the character's turn
    (no model call); None lets the model speak. state = {"round", "simulation"}.
    """
    protocol = getattr(opts, "protocol", None) or PR.DEFAULT_PROTOCOL
    item = copy.deepcopy(item)
    speaking = item["speaking_characters_w_env"]
    if ENVIRONMENT not in speaking:
        speaking.append(ENVIRONMENT)
    majors = item["major_characters"]
    profiles = involved_profiles(item, protocol)
    databases = databases or {}
    extra = dict(protocol=protocol, concise=P.CONCISE, name_prefix=P.NAME_PREFIX.template)

    agents: dict[str, Agent] = {}
    for name in speaking + [NSP]:
        if name == NSP:
            agents[name] = Agent(llm, name, opts.nsp_model, get_nsp_prompt(speaking, item["scenario"], eval_version=True),
                                 stage="nsp", **extra)
        elif name == ENVIRONMENT:
            agents[name] = Agent(llm, name, opts.env_model, get_environment_prompt(majors, item["scenario"], rng=rng),
                                 stage="environment", **extra)
        else:
            prompt = get_character_prompt(
                item["book"], name, profiles.get(name, ""), item["plot"].get("summary", ""), item["scenario"],
                motivation_of(item, name, opts.use_motivation), thoughtless=opts.wo_thought,
                other_character_profiles=profiles, exclude_plot_summary=True, fixed_template=True,
                add_output_example="coser" not in opts.actor_model.lower(), add_rag=bool(opts.retrieval), rng=rng)
            agents[name] = Agent(llm, name, opts.actor_model, prompt, retrievers=databases.get(name), stage="actor",
                                 **extra)

    dialogues = item.get("dialogues") or []
    log: list[dict] = []
    failures: list[dict] = []

    def emit(kind, payload):
        if on_event is not None:
            on_event(kind, payload)

    current = speaking[0]
    rounds = 0
    for r in range(MAX_ROUNDS):
        if current == END_CHAT:
            break
        rounds = r + 1
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
                emit("speak", {"round": r, "role": actor})
                supplied = None
                if human_turn is not None and actor != NSP:
                    supplied = human_turn(actor, {"round": r, "simulation": list(log)})
                tokens = _Tokens(emit, r, actor) if on_event is not None else None
                reply = supplied if supplied is not None else agents[actor].chat(tokens)
                if supplied is None and agents[actor].exhausted:
                    # The scene goes on as the reference's does (same requests), but the sample is
                    # marked failed: an endpoint that only ever answers "" must not yield a scored scene.
                    failures.append({"round": r, "role": actor, "reason": EMPTY_REASON})
            if actor == NSP:
                predicted = PR.predict_nsp(reply) if protocol == "reference" else parse_nsp(reply)
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
                shown = _shown(reply, actor, protocol)
                for name, agent in agents.items():
                    if name == actor:
                        agent.update("assistant", reply)
                    else:
                        agent.update("user", shown)
            emit("turn", {"round": r, "role": log[-1]["role"], "content": log[-1]["content"]})
    emit("end", {"rounds": rounds})
    record = {"book_title": item["book"], "i_p": item["i_p"], "i_c": item["i_c"], "circumstance": item,
              "simulation": log, "involved_character_profiles": profiles}
    if failures:
        record.update(failed=True, failures=failures)
    return record


class _Tokens:
    """on_token of one turn: pieces become "token" events; the client calls discard() before it asks
    again after a stream broke mid-way, so a viewer drops what it showed."""

    def __init__(self, emit, r: int, role: str):
        self.emit, self.where = emit, {"round": r, "role": role}

    def __call__(self, piece: str) -> None:
        self.emit("token", {**self.where, "text": piece})

    def discard(self) -> None:
        self.emit("discard", dict(self.where))


def sim_settings(opts, repeat: int = 0) -> dict:
    """The settings a simulation's run spec records (coser/runspec.py): those that change its outcome."""
    return {"continue_from": opts.continue_from, "wo_thought": opts.wo_thought,
            "use_motivation": opts.use_motivation, "retrieval": opts.retrieval, "seed": opts.seed,
            "repeat": repeat, "max_tokens": MAX_TOKENS}


def simulation_spec(llm, opts, test_file: str | None, items: list[dict], repeat: int = 0) -> dict:
    """The run spec gca_evaluation/main.py writes with a simulation of these items (one item: its
    --sample_ids run), so a scene run elsewhere (the web app) carries the identical record."""
    roles = {"actor": opts.actor_model, "env": opts.env_model, "nsp": opts.nsp_model}
    return RS.build_spec("simulation", llm, roles, sim_settings(opts, repeat),
                         RS.test_set_info(test_file, items, [sample_key(it) for it in items]),
                         getattr(opts, "protocol", None) or PR.DEFAULT_PROTOCOL)


def _fallback(rng: random.Random, majors: list, speaking: list, current: str) -> str:
    """A random other speaker, drawn from a sorted list so the draw is reproducible (both protocols:
    the reference's own draw depends on PYTHONHASHSEED)."""
    cands = sorted(set(majors + [ENVIRONMENT]) - {current})
    if not cands:
        cands = sorted(set(speaking) - {current})
    return rng.choice(cands) if cands else current
