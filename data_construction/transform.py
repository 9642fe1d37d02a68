"""Turn the final per-book files into ShareGPT SFT data and the CoSER test set (METHOD.md 3).

Usage: python data_construction/transform.py --dir data [--seed 42] [--test_per_split 100]

Reads {dir}/final/*, writes {dir}/train/sft_sharegpt.json, {dir}/train/dataset_info.json,
{dir}/test/held_out_plots.json and {dir}/test/test_set.json. No LLM calls, so nothing here
imports the client (the reference needed config.json and openai just to run this step).
One random.Random(seed) drives every training-side draw, so two runs are byte-identical.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import random
import sys
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from coser import prompts  # noqa: E402
from coser.errors import CoserError, InputError  # noqa: E402
from coser.io import atomic_write_json, read_json  # noqa: E402
from coser.text import remove_inner_thoughts  # noqa: E402

ENV = prompts.ENVIRONMENT
DEFAULT_SEED = 42          # the reference seeds its test sampling with 42
TRAIN_FRACTION = 0.9       # books (ID vs OOD) and, when missing, plots (train vs held out)
NSP_KEEP_PROB = 0.1
NSP_RANDOM_LABEL_PROB = 0.25
MODES = [(thoughtless, others) for thoughtless in (True, False) for others in (True, False)]
DATASET_NAME = "coser_sft"


def mode_name(thoughtless: bool, others: bool) -> str:
    return ("thoughtless" if thoughtless else "thought") + ("+others" if others else "")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ---- file order ------------------------------------------------------------------------
def stable_hash(name: str) -> int:
    """Java-style 31-polynomial string hash kept to 32 bits (the reference's file order)."""
    h = 0
    for c in name:
        h = (31 * h + ord(c)) & 0xFFFFFFFF
    return h


def stable_order(names: list) -> list:
    # Ties keep listing order; we list sorted so ties are machine-independent too.
    return sorted(sorted(names), key=stable_hash)


# ---- normalization -----------------------------------------------------------------------
def normalize_key_characters(chars) -> list:
    """Rename 'character' to 'name'; drop entries that have neither."""
    kept = []
    for kc in chars if isinstance(chars, list) else []:
        if not isinstance(kc, dict):
            continue
        if "name" not in kc and "character" in kc:
            kc["name"] = kc.pop("character")
        if "name" in kc:
            kept.append(kc)
    return kept


def normalize_utterance(u) -> str | None:
    """Fill 'message'/'character' in place from the fallback keys; return a reason if broken."""
    if not isinstance(u, dict):
        return "utterance is not an object"
    if "message" not in u:
        for key in ("thought", "description"):
            if key in u:
                u["message"] = u[key]
                break
        else:
            bracket = next((k for k in u if k.startswith("[") and k.endswith("]")), None)
            if bracket is None:
                return "utterance without message"
            u["message"] = bracket + str(u.pop(bracket))
    if "character" not in u:
        if "name" not in u:
            return "utterance without character"
        u["character"] = u["name"]
    if not isinstance(u["message"], str) or not isinstance(u["character"], str):
        return "utterance message/character is not a string"
    return None


def speakers_by_count(dialogues: list) -> list:
    counts = Counter(u["character"] for u in dialogues)
    return [c for c, _ in sorted(counts.items(), key=lambda kv: -kv[1])]  # stable: ties keep first appearance


def first_present(d: dict, keys, default=""):
    for k in keys:
        if k in d:
            return d[k]
    return default


# ---- chats -------------------------------------------------------------------------------
def conversation_to_chat(system_prompt: str, dialogues: list, sample_character: str,
                         thoughtless: bool) -> list | None:
    """ShareGPT turns for one speaker's view of a conversation (METHOD 3.5); None if it never speaks."""
    chat = [{"from": "system", "value": system_prompt},
            {"from": "human", "value": prompts.CONVERSATION_START}]
    prev = "human"
    has_reply = False
    for u in dialogues:
        who, msg = u["character"], u["message"]
        if who != sample_character:
            if who != ENV:
                msg = remove_inner_thoughts(msg)
            text = f"{who}: {msg}\n\n"
            if prev == "human":
                chat[-1]["value"] += text
            else:
                chat.append({"from": "human", "value": text})
            prev = "human"
        else:
            if thoughtless:
                if who != ENV:
                    msg = remove_inner_thoughts(msg)
                if msg.strip(" \n") == "":
                    continue
            if prev == "character":
                chat[-1]["value"] += f"{msg}\n\n"   # a merged turn carries no second name prefix
            else:
                chat.append({"from": "assistant", "value": f"{who}: {msg}\n\n"})
            prev = "character"
            has_reply = True
    return chat if has_reply else None


def nsp_chat(system_prompt: str, dialogues: list, major_characters: list, rng: random.Random) -> list:
    """Next-speaker targets for every turn, then <END CHAT> (METHOD 3.6; thoughts kept, as in the reference)."""
    chat = [{"from": "system", "value": system_prompt},
            {"from": "human", "value": prompts.CONVERSATION_START}]
    known = set(major_characters) | {ENV}
    for u in dialogues:
        label = u["character"]
        if label not in known and rng.random() < NSP_RANDOM_LABEL_PROB:
            label = prompts.NSP_UNSURE
        chat.append({"from": "assistant", "value": label})
        chat.append({"from": "human", "value": f"{u['character']}: {u['message']}\n\n"})
    chat.append({"from": "assistant", "value": prompts.END_CHAT})
    return chat


# ---- one book ----------------------------------------------------------------------------
class BookStats:
    def __init__(self):
        self.samples = Counter()       # (mode, kind) -> training samples (train plots only)
        self.skipped = {}              # (i_p, i_c) -> reason


def prepare_conversation(book, i_p, i_c, conv, profiles, stats) -> bool:
    """Normalize a conversation in place; False (and a warning once) if it must be skipped."""
    reason = None
    if not isinstance(conv, dict):
        reason = "conversation is not an object"
    elif not isinstance(conv.get("dialogues"), list):
        reason = "conversation without dialogues"
    else:
        conv["key_characters"] = normalize_key_characters(conv.get("key_characters", []))
        reason = next((r for r in map(normalize_utterance, conv["dialogues"]) if r), None)
        if reason is None and not any(u["character"] != ENV for u in conv["dialogues"]):
            reason = "no speaker other than Environment"
    if reason:
        if (i_p, i_c) not in stats.skipped:
            stats.skipped[(i_p, i_c)] = reason
            warn(f"{book}: plot {i_p} conversation {i_c}: {reason}; skipped")
        return False
    # Same values on every pass (the reference asserts so); the held-out output keeps them.
    conv["speaking_characters_w_env"] = speakers_by_count(conv["dialogues"])
    conv["major_characters"] = [c for c in conv["speaking_characters_w_env"] if c in profiles]
    return True


def character_samples(book, plot, conv, profiles, thoughtless, with_others, rng, protocol="fixed"):
    """(kind, speaker, chat) for every speaker of one conversation in one mode pass, plus NSP.

    Two plot entries with one name: `reference` uses the first (PROTOCOL 11), `fixed` the last."""
    speaking = conv["speaking_characters_w_env"]
    major = conv["major_characters"]
    # None or missing text becomes '' rather than crashing the whole book.
    summary = str(plot.get("summary") or "")
    scenario = str(conv.get("scenario") or "")
    scenario_str = scenario + "\n" + summary if rng.random() < 0.5 else scenario
    plot_kcs = {kc["name"]: kc for kc in plot["key_characters"] if isinstance(kc["name"], str)}
    if protocol == "reference":
        plot_kcs = {}
        for kc in plot["key_characters"]:
            if isinstance(kc["name"], str):
                plot_kcs.setdefault(kc["name"], kc)
    conv_kcs = {}
    for kc in conv["key_characters"]:
        if isinstance(kc["name"], str):
            conv_kcs.setdefault(kc["name"], kc)

    # Composite profiles: the plot's short description in front of the long profile.
    composite = {}
    for c in speaking:
        if c == ENV:
            continue
        text = profiles.get(c) or ""
        kc = plot_kcs.get(c)
        if kc is not None and "description" in kc:
            text = str(kc["description"]).strip("\n") + "\n\n" + str(text).strip("\n")
        text = str(text).strip(" \n")
        if text:
            composite[c] = text

    out = []
    for c in speaking:
        if c == ENV:
            system = prompts.get_environment_prompt(major, scenario_str, rng)
        else:
            entry = conv_kcs.get(c)
            motivation = ""
            if entry is not None:
                # 'thought' is the published layout's name for the motivation.
                motivation = str(first_present(entry, ("motivation", "thought", "description")) or "")
                if rng.random() < 0.5:
                    motivation = ""
            profile = composite.get(c, "")
            if c in plot_kcs and rng.random() < 0.5:
                profile += "\n\n" + str(first_present(plot_kcs[c], ("experience", "summary")) or "")
            system = prompts.get_character_prompt(
                book, c, profile.strip(), background=summary, scenario=scenario,
                motivation=motivation, thoughtless=thoughtless,
                other_character_profiles=composite if with_others else None, rng=rng)
        chat = conversation_to_chat(system, conv["dialogues"], c, thoughtless)
        if chat is not None:
            out.append(("environment" if c == ENV else "character", c, chat))
    nsp = nsp_chat(prompts.get_nsp_prompt(speaking, scenario_str), conv["dialogues"], major, rng)
    out.append(("nsp", prompts.NSP, nsp))
    return out


def character_weights(datasets: dict) -> dict:
    """max(1, sqrt(#plots the character appears in)): frequent characters weigh more in test sampling."""
    weights = {}
    for name, ds in datasets.items():
        plots = ds.get("plots", []) if isinstance(ds, dict) else []
        weights[name] = max(1, math.sqrt(len(plots) if isinstance(plots, list) else 0))
    return weights


def conversation_weight(conv: dict, weights: dict) -> float:
    try:
        names = [c for c in conv["speaking_characters_w_env"] if c != ENV]
        return sum(weights.get(c, 1) for c in names) / len(names)
    except (KeyError, TypeError, ZeroDivisionError):
        return 1


def process_book(path: str, book: str, rng: random.Random, protocol: str = "fixed"):
    """Training samples (train plots only) and the held-out entry of one final file.

    A book that lacks its plots or character data is skipped: the reason string is returned.
    """
    data = read_json(path, "final book file")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with 'plots' and 'character_datasets'")
    missing = [k for k, kind in (("plots", list), ("character_datasets", dict))
               if not isinstance(data.get(k), kind)]
    if missing:
        reason = f"{path}: missing or malformed {', '.join(missing)}"
        warn(f"{reason}; book skipped")
        return reason
    plots, datasets = data["plots"], data["character_datasets"]
    profiles = {name: (ds.get("profile", "") if isinstance(ds, dict) else "")
                for name, ds in datasets.items()}
    split_index = data.get("split_plot_index", int(len(plots) * TRAIN_FRACTION))
    if not isinstance(split_index, int) or isinstance(split_index, bool) or split_index < 0:
        raise InputError(f"{path}: field 'split_plot_index' should be a non-negative integer")
    stats = BookStats()
    samples = []
    for thoughtless, with_others in MODES:
        mode = mode_name(thoughtless, with_others)
        for i_p, plot in enumerate(plots):
            if not isinstance(plot, dict):
                if (i_p, None) not in stats.skipped:
                    stats.skipped[(i_p, None)] = "plot is not an object"
                    warn(f"{book}: plot {i_p}: not an object; skipped")
                continue
            plot["key_characters"] = normalize_key_characters(plot.get("key_characters", []))
            convs = plot.get("conversation", [])
            if not isinstance(convs, list):
                if (i_p, None) not in stats.skipped:
                    stats.skipped[(i_p, None)] = "conversation is not a list"
                    warn(f"{book}: plot {i_p}: 'conversation' is not a list; its conversations skipped")
                continue
            for i_c, conv in enumerate(convs):
                if not prepare_conversation(book, i_p, i_c, conv, profiles, stats):
                    continue
                for kind, _, chat in character_samples(book, plot, conv, profiles, thoughtless,
                                                       with_others, rng, protocol):
                    if i_p >= split_index:
                        continue
                    # The 0.1 draw happens only for train plots, as in the reference.
                    if kind == "nsp" and not rng.random() < NSP_KEEP_PROB:
                        continue
                    samples.append(chat)
                    stats.samples[(mode, kind)] += 1

    weights = character_weights(datasets)
    for i_p, plot in enumerate(plots):
        if isinstance(plot, dict):
            plot["i_p"] = i_p
    held_out = [p for p in plots[split_index:] if isinstance(p, dict)]
    for plot in held_out:
        convs = plot.get("conversation", [])
        for conv in convs if isinstance(convs, list) else []:
            if isinstance(conv, dict):
                conv["weight"] = conversation_weight(conv, weights)
    entry = {"character_profiles": profiles, "plots": held_out}
    return samples, entry, stats, split_index, len(plots)


# ---- test sampling -----------------------------------------------------------------------
def to_test_items(test_plots: dict, n_samples: int, tag: str, seed: int = DEFAULT_SEED) -> list:
    """The reference's seeded weighted sampling without replacement (METHOD 3.8), pick for pick.

    Conversations skipped as broken stay candidates (so the draws match the reference) but are
    rejected when drawn instead of crashing as the reference does.
    """
    candidates = []
    for book, entry in test_plots.items():
        for i, plot in enumerate(entry["plots"]):
            for j, conv in enumerate(plot.get("conversation", [])):
                if isinstance(conv, dict):
                    candidates.append((book, i, j, conv.get("weight", 1.0)))
    if len(candidates) < n_samples:
        warn(f"{tag}: only {len(candidates)} held-out conversations, fewer than {n_samples}")
        n_samples = len(candidates)
    candidates.sort(key=lambda c: -c[3])
    candidates = candidates[:max(n_samples, len(candidates) // 2)]

    def usable(c):
        return "major_characters" in test_plots[c[0]]["plots"][c[1]]["conversation"][c[2]]

    n_usable = sum(map(usable, candidates))
    if n_usable < n_samples:
        warn(f"{tag}: only {n_usable} usable conversations in the top half; sampling {n_usable}")
        n_samples = n_usable
    if n_samples == 0:
        return []
    weights = np.array([c[3] for c in candidates], dtype=float)
    probs = weights / weights.sum()
    # RandomState(seed) yields the same stream as the reference's np.random.seed(seed) + np.random.choice.
    state = np.random.RandomState(seed)
    chosen, seen = [], set()
    while len(chosen) < n_samples:
        k = int(state.choice(len(candidates), p=probs))
        if k in seen:
            continue
        seen.add(k)
        if usable(candidates[k]):
            chosen.append(candidates[k])

    items = []
    for book, i, j, _ in chosen:
        entry = test_plots[book]
        plot = copy.deepcopy(entry["plots"][i])
        conv = copy.deepcopy(plot.pop("conversation")[j])
        for kc in conv.get("key_characters", []):
            kc.pop("i_p", None)
            kc.pop("i_c", None)
        for u in conv.get("dialogues", []):
            for k in ("i_p", "i_c", "i_u"):
                u.pop(k, None)
        for kc in plot.get("key_characters", []):
            kc.pop("i_p", None)
        conv.pop("i_c", None)   # re-added below so the field order is the published one
        conv["plot"] = plot
        conv["character_profiles"] = {c: entry["character_profiles"][c] for c in conv["major_characters"]}
        conv["book"] = book
        conv["i_p"] = plot["i_p"]
        conv["i_c"] = j
        conv["tag"] = tag
        items.append(conv)
    return items


def dataset_info_entry(file_name: str) -> dict:
    """LLaMA-Factory dataset_info.json entry for the ShareGPT file (system turn first, role tags)."""
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                     "assistant_tag": "assistant", "system_tag": "system"}}


# ---- driver ------------------------------------------------------------------------------
def list_final_files(final_dir: str) -> list:
    if not os.path.isdir(final_dir):
        raise InputError(f"{final_dir}: folder of final book files not found (run data construction first)")
    # Hidden files are skipped: they are our own atomic-write temp files or OS litter.
    names = [n for n in os.listdir(final_dir)
             if not n.startswith(".") and os.path.isfile(os.path.join(final_dir, n))]
    if not names:
        raise InputError(f"{final_dir}: no final book files")
    return stable_order(names)


def transform(data_dir: str, seed: int = DEFAULT_SEED, test_per_split: int = 100,
              drop_trailing_human: bool = False, protocol: str = "fixed") -> dict:
    """Run the whole transform; returns the counts that main() prints."""
    final_dir = os.path.join(data_dir, "final")
    files = list_final_files(final_dir)
    rng = random.Random(seed)
    train = []
    held_out = {"id": {}, "ood": {}}
    report = {"books": [], "modes": Counter(), "skipped_books": 0, "skipped_conversations": 0}
    for i_b, name in enumerate(files):
        book = os.path.splitext(name)[0]
        result = process_book(os.path.join(final_dir, name), book, rng, protocol)
        if isinstance(result, str):
            report["skipped_books"] += 1
            report.setdefault("skip_reasons", []).append(result)
            continue
        samples, entry, stats, split_index, n_plots = result
        # Position in the full hashed list, so one broken file does not move other books across the split.
        split = "id" if i_b < len(files) * TRAIN_FRACTION else "ood"
        held_out[split][book] = entry
        if split == "id":
            train.extend(samples)
            report["modes"].update(stats.samples)
        n_held = sum(len(p.get("conversation", []) or []) for p in entry["plots"])
        report["books"].append((book, split, len(samples) if split == "id" else 0, n_plots,
                                split_index, n_held, len(stats.skipped)))
        report["skipped_conversations"] += len(stats.skipped)
    if not report["books"]:
        # Writing empty outputs would look like success; nothing usable is an error.
        reasons = report.get("skip_reasons", [])
        detail = f"; {reasons[0]}" + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
        raise InputError(f"{final_dir}: no usable final book file{detail if reasons else ''}")
    rng.shuffle(train)
    # LLaMA-Factory skips a ShareGPT sample with an odd number of turns after the system one, i.e.
    # one that ends with a human turn (most character samples do, as in the reference). That turn
    # carries no training target, so dropping it changes nothing else.
    report["ends_with_human"] = sum(1 for chat in train if chat[-1]["from"] == "human")
    if drop_trailing_human:
        for chat in train:
            while chat[-1]["from"] == "human":
                chat.pop()
    sft = [{"conversations": chat} for chat in train]
    test_set = (to_test_items(held_out["id"], test_per_split, "id", seed)
                + to_test_items(held_out["ood"], test_per_split, "ood", seed))

    train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    atomic_write_json(os.path.join(train_dir, "sft_sharegpt.json"), sft, indent=2)
    atomic_write_json(os.path.join(train_dir, "dataset_info.json"),
                      {DATASET_NAME: dataset_info_entry("sft_sharegpt.json")}, indent=2)
    # indent 4 matches the published test files.
    atomic_write_json(os.path.join(test_dir, "held_out_plots.json"), held_out, indent=4)
    atomic_write_json(os.path.join(test_dir, "test_set.json"), test_set, indent=4)
    report["n_train"] = len(sft)
    report["n_test"] = Counter(item["tag"] for item in test_set)
    report["n_test_books"] = {tag: len(set(i["book"] for i in test_set if i["tag"] == tag))
                              for tag in ("id", "ood")}
    return report


def print_report(report: dict, data_dir: str) -> None:
    books = report["books"]
    n_id = sum(1 for b in books if b[1] == "id")
    print(f"books: {len(books)} ({n_id} id, {len(books) - n_id} ood), "
          f"{report['skipped_books']} skipped; conversations skipped: {report['skipped_conversations']}")
    print(f"train samples: {report['n_train']}")
    if report["ends_with_human"]:
        verb = "trimmed" if report.get("trimmed") else "kept (LLaMA-Factory skips these; see --drop_trailing_human)"
        print(f"  samples ending with a human turn: {report['ends_with_human']}, {verb}")
    by_mode = defaultdict(dict)
    for (mode, kind), n in sorted(report["modes"].items()):
        by_mode[mode][kind] = n
    for mode, kinds in by_mode.items():
        detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        print(f"  mode {mode:<18} {sum(kinds.values()):>6}  ({detail})")
    print(f"test items: {report['n_test'].get('id', 0)} id from {report['n_test_books']['id']} books, "
          f"{report['n_test'].get('ood', 0)} ood from {report['n_test_books']['ood']} books")
    print("per book: split  train-samples  plots  split-index  held-out-conversations  skipped")
    for book, split, n_samples, n_plots, split_index, n_held, n_skip in books:
        print(f"  {book}: {split} {n_samples} {n_plots} {split_index} {n_held} {n_skip}")
    print(f"wrote {os.path.join(data_dir, 'train', 'sft_sharegpt.json')}, dataset_info.json, "
          f"{os.path.join(data_dir, 'test', 'held_out_plots.json')}, test_set.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert {dir}/final/*.json into ShareGPT SFT data and the GCA test set.")
    parser.add_argument("--dir", default="data", help="data root holding final/ (default: data)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of all randomness; 42 reproduces the reference's test picks")
    parser.add_argument("--test_per_split", type=int, default=100,
                        help="test conversations per split (id, ood); fewer with a warning if short")
    parser.add_argument("--drop_trailing_human", action="store_true",
                        help="drop a sample's final human turn(s), which carry no target, so that "
                             "LLaMA-Factory accepts every sample (off: the reference's layout)")
    parser.add_argument("--protocol", choices=["reference", "fixed"], default="reference",
                        help="which of two same-name key-character entries a sample uses: 'reference' the "
                             "first, 'fixed' the last (README 'Compatibility / protocols') (default %(default)s)")
    args = parser.parse_args(argv)
    if args.test_per_split < 0:
        parser.error("--test_per_split must be >= 0")
    if not 0 <= args.seed <= 2**32 - 1:   # numpy's RandomState (the reference's test picks) takes no other seed
        parser.error(f"--seed must be between 0 and {2**32 - 1}, got {args.seed}")
    if not os.path.isdir(args.dir):
        report = transform(args.dir, args.seed, args.test_per_split, args.drop_trailing_human, args.protocol)
    else:
        from coser import runspec as RS
        with RS.DirLock(args.dir):  # one transform per data folder at a time
            record = RS.RunRecord(args.dir, "transform")
            record.data["spec"] = {"spec_version": RS.SPEC_VERSION, "stage": "transform", "protocol": args.protocol,
                                   "settings": {"seed": args.seed, "test_per_split": args.test_per_split,
                                                "drop_trailing_human": args.drop_trailing_human},
                                   "toolkit": RS.toolkit_info()}
            try:
                report = transform(args.dir, args.seed, args.test_per_split, args.drop_trailing_human, args.protocol)
            except BaseException as e:
                record.log.error("stopped: %s", e)
                record.save(status="stopped")
                raise
            record.add(output=os.path.join(args.dir, "test", "test_set.json"))
            record.add(output=os.path.join(args.dir, "train", "sft_sharegpt.json"))
            record.save()
    report["trimmed"] = args.drop_trailing_human
    print_report(report, args.dir)
    return 0


def _cli() -> None:
    # coser.cli would pull in the LLM client; this script only needs its error contract.
    try:
        code = main()
    except CoserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    _cli()
