"""Books in, CoSER character data out: chunk -> extract -> assemble (METHOD.md section 2).

    python data_construction/main.py --input books.jsonl --output_dir data --num_workers 5 --model gpt-4o
    python data_construction/main.py --input books.jsonl --dry_run          # chunks + cost estimate, no LLM
    python data_construction/main.py --input books.jsonl --books Othello --model local --chunk_size 1024 --limit_chunks 2

Writes {output_dir}/extracted/{title}.json and {output_dir}/final/{title}.json. A killed run
resumes at the next chunk / assembly call; rerun the same command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coser import batch, cli  # noqa: E402
from coser.errors import CoserError, InputError  # noqa: E402
from coser.io import atomic_write_text, iter_jsonl, read_json, require  # noqa: E402

from data_construction import chunking  # noqa: E402
from coser.pool import LeafPool, task_threads  # noqa: E402
from data_construction.assemble import EarlyEnhance, assemble_book, final_path  # noqa: E402
from data_construction.extract import build_prompt, extract_book, extracted_path  # noqa: E402

# Dry-run cost guess: an extraction reply is JSON about half as long as its chunk (an
# assumption, printed with the estimate); assembly calls are not estimated.
OUTPUT_PER_INPUT = 0.5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Extract plots, conversations and character profiles from books (CoSER).")
    p.add_argument("--input", required=True, help="books JSONL: one {title, author, content} per line")
    p.add_argument("--output_dir", default="data", help="root for chunks/, extracted/ and final/ (default: data)")
    p.add_argument("--model", default="gpt-4o", help="main LLM (default: gpt-4o; 'local' = embedded offline model)")
    p.add_argument("--candidate_model", default="gpt-4o", help="fallback LLM for name normalization")
    p.add_argument("--regenerate", action="store_true", help="redo stages whose output file already exists")
    p.add_argument("--chunk_size", type=int, default=8192, help="target chunk size in cl100k tokens (default 8192)")
    p.add_argument("--limit_chunks", type=int, default=None, metavar="N",
                   help="trial runs: extract only the first N chunks of each book (outputs then cover only those)")
    p.add_argument("--books", nargs="+", default=None, metavar="TITLE",
                   help="only these books (original or sanitized title)")
    p.add_argument("--dry_run", action="store_true",
                   help="no LLM call: print chapters, chunks, tokens, calls and cost; write chunks/{title}.jsonl")
    p.add_argument("--protocol", choices=["reference", "fixed"], default="reference",
                   help="extraction protocol: 'reference' reproduces the reference's parsing and acceptance, "
                        "'fixed' this toolkit's (README 'Compatibility / protocols') (default %(default)s)")
    cli.add_common_args(p)
    batch.add_args(p, "extraction (one chunk per book per round), enhancement, name and profile calls")
    return p


def load_books(path: str, only: list[str] | None) -> tuple[list[dict], list[str]]:
    """Valid books (title sanitized) and one error line per bad input line."""
    books, errors, seen = [], [], {}
    for lineno, obj in iter_jsonl(path, "books file"):
        where = f"{path}: line {lineno}"
        try:
            if isinstance(obj, InputError):
                raise obj
            title = require(obj, "title", where, str)
            author = require(obj, "author", where, str)
            content = require(obj, "content", where, str)
            if not content.strip():
                raise InputError(f"{where}: field 'content' is empty or whitespace only")
            try:
                safe = chunking.sanitize_title(title)
            except ValueError as e:
                raise InputError(f"{where}: field 'title': {e}") from None
            if only is not None and title not in only and safe not in only:
                continue
            key = safe.casefold()   # case-insensitive file systems would overwrite too
            if key in seen:
                raise InputError(f"{where}: field 'title': {title!r} gives the same file name as the book "
                                 f"on line {seen[key]} ({safe!r})")
            seen[key] = lineno
            books.append({"title": safe, "original_title": title, "author": author, "content": content,
                          "line": lineno})
        except InputError as e:
            errors.append(str(e))
    return books, errors


def dry_run(books: list[dict], args) -> list[dict]:
    from coser.config import load_settings

    from coser.usage import Usage

    usage = Usage(load_settings(args.config).prices)
    prices = usage.price(args.model)
    rows = []
    for b in books:
        plan = chunking.chunk_book(b["content"], args.chunk_size, where=f"{args.input}: line {b['line']}")
        chunks = plan.chunks[: args.limit_chunks] if args.limit_chunks else plan.chunks
        counts = [chunking.count_tokens(c) for c in chunks]
        lines = [_json_line({"i_chunk": i, "n_tokens": n, "text": c}) for i, (n, c) in enumerate(zip(counts, chunks))]
        atomic_write_text(os.path.join(args.output_dir, "chunks", f"{b['title']}.jsonl"), "".join(lines))
        prompt_tokens = sum(chunking.count_tokens(build_prompt(b["title"], b["author"], c, [])) for c in chunks)
        cost = None
        if prices:
            cost = usage.cost_of(args.model, prompt_tokens, sum(counts) * OUTPUT_PER_INPUT,
                                 batch=bool(getattr(args, "batch", False)))
        rows.append({"title": b["title"], "chapters": None if plan.chapters is None else len(plan.chapters),
                     "chunks": len(chunks), "tokens": sum(counts), "calls": len(chunks),
                     "prompt_tokens": prompt_tokens, "cost": cost})
    head = f"{'book':40} {'chapters':>8} {'chunks':>6} {'tokens':>9} {'calls':>6} {'est. USD':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ch = "none" if r["chapters"] is None else str(r["chapters"])
        cost = "-" if r["cost"] is None else f"{r['cost']:.2f}"
        print(f"{r['title'][:40]:40} {ch:>8} {r['chunks']:>6} {r['tokens']:>9} {r['calls']:>6} {cost:>9}")
    print(f"calls = extraction requests at one attempt each (up to 6x with retries); 'none' chapters = fixed-size "
          f"chunks; cost assumes replies of {OUTPUT_PER_INPUT:g}x the chunk tokens and excludes assembly"
          + ("; at batch prices (--batch)" if getattr(args, "batch", False) else "")
          + ("" if prices else f"; no price for {args.model} in the config"))
    return rows


def _json_line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


class BookCounter:
    """Forwards to the shared client and counts this book's calls, cache hits and tokens."""

    def __init__(self, llm):
        self.llm = llm
        self.lock = threading.Lock()
        self.calls = self.cache_hits = self.tokens = 0

    def chat(self, model, messages, **kw):
        hit = self.llm.use_cache and self.llm.was_cached(model, messages, **kw)
        text = self.llm.chat(model, messages, **kw)
        with self.lock:
            self.calls += 1
            self.cache_hits += bool(hit)
            if not hit:
                prompt = messages if isinstance(messages, str) else "".join(m["content"] for m in messages)
                self.tokens += chunking.tokens.count_tokens(prompt) + chunking.tokens.count_tokens(text)
        return text

    def reject(self, model, messages, **kw):
        """A reply that failed parsing/validation is never served again from the cache as good."""
        self.llm.reject(model, messages, **kw)


def process_book(llm, book: dict, args, pool=None) -> dict:
    t0 = time.time()
    counter = BookCounter(llm)
    pool = pool or LeafPool(args.num_workers)
    title = book["title"]
    plan = chunking.chunk_book(book["content"], args.chunk_size, where=f"{args.input}: line {book['line']}")
    chunks = plan.chunks[: args.limit_chunks] if args.limit_chunks else plan.chunks
    xpath = extracted_path(args.output_dir, title)
    extracted = None
    if os.path.exists(xpath) and not args.regenerate:
        extracted = read_json(xpath, "extracted file")
        done = extracted.get("n_chunks") if isinstance(extracted, dict) else None
        if isinstance(done, int) and done != len(chunks):
            cli.notice(f"{xpath} covers {done} chunks, this run plans {len(chunks)} "
                       "(e.g. an earlier --limit_chunks trial): kept as is; use --regenerate to redo it")
    fpath = final_path(args.output_dir, title)
    assemble = args.regenerate or not os.path.exists(fpath)
    # Enhancement may start during extraction only when the cache keeps its replies across a kill.
    # Not in batch mode: a pass must not end while early calls still run (they would then go online).
    early = EarlyEnhance(counter, args.model, title, pool) \
        if assemble and pool.size > 1 and llm.use_cache and not batch.enabled(args) else None
    if extracted is None:
        extracted = extract_book(counter, book, chunks, args.output_dir, args.model, protocol=args.protocol,
                                 on_plots=early.plots_finished if early else None)
    if not assemble:
        final, astats = read_json(fpath, "final file"), {}
    else:
        final, astats = assemble_book(counter, title, extracted, args.output_dir, args.model, args.candidate_model,
                                      args.num_workers, protocol=args.protocol, pool=pool, early=early)
    convs = [c for p in final["plots"] for c in p.get("conversation") or []]
    ratios = [c["grounded_ratio"] for c in convs if isinstance(c.get("grounded_ratio"), (int, float))]
    return {
        "title": title, "chunks": len(chunks), "plots": len(final["plots"]), "conversations": len(convs),
        "utterances": sum(len(c.get("dialogues") or []) for c in convs),
        "characters": len(final["character_datasets"]),
        "failures": len(extracted.get("fail_to_parse_responses") or []) + sum(astats.values()),
        "grounded": None if not ratios else round(sum(ratios) / len(ratios), 3),
        "tokens": counter.tokens, "calls": counter.calls, "cache_hits": counter.cache_hits,
        "seconds": round(time.time() - t0, 1),
    }


def print_summary(rows: list[dict]) -> None:
    cols = ["chunks", "plots", "conversations", "utterances", "characters", "failures", "grounded", "tokens",
            "calls", "cache_hits", "seconds"]
    head = f"{'book':32} " + " ".join(f"{c[:10]:>10}" for c in cols)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = ["-" if r[c] is None else str(r[c]) for c in cols]
        print(f"{r['title'][:32]:32} " + " ".join(f"{v:>10}" for v in cells))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.chunk_size < 2:
        raise CoserError("--chunk_size must be at least 2")
    if args.limit_chunks is not None and args.limit_chunks < 1:
        raise CoserError("--limit_chunks must be at least 1")
    books, errors = load_books(args.input, args.books)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if args.books:
        missing = [t for t in args.books if not any(t in (b["title"], b["original_title"]) for b in books)]
        for t in missing:
            errors.append(f"--books: no book titled {t!r} in {args.input}")
            print(f"error: {errors[-1]}", file=sys.stderr)
    if not books:
        raise InputError(f"{args.input}: no usable book")
    if args.dry_run:
        try:
            dry_run(books, args)
        except InputError as e:
            errors.append(str(e))
            print(f"error: {e}", file=sys.stderr)
        return 2 if errors else 0
    llm = cli.setup(args)
    from coser import runspec as RS
    from coser.pool import map_ordered

    # One construction per output folder at a time (a second copy waits, then reuses what the first wrote);
    # a record of this invocation under {output_dir}/runs/ and a readable log where the CoSER README
    # points: data_construction/main.log in the repo folder, as the reference (else {output_dir}/runs/main.log).
    lock = RS.DirLock(args.output_dir).acquire()
    log_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.log")
    if not os.access(os.path.dirname(log_path), os.W_OK):
        log_path = os.path.join(args.output_dir, "runs", "main.log")
    record = RS.RunRecord(args.output_dir, "construction", log_path=log_path)
    record.data["spec"] = RS.build_spec("construction", llm, {"model": args.model,
                                                              "candidate": args.candidate_model},
                                        {"chunk_size": args.chunk_size, "limit_chunks": args.limit_chunks},
                                        {"path": args.input, "books": [b["title"] for b in books]},
                                        getattr(args, "protocol", "reference"))
    # Every book at once; their independent assembly calls share one pool. The calls in flight are
    # bounded in coser/llm.py (--num_workers, max_connections), not by how many books run.
    pool = LeafPool(task_threads(args.num_workers))

    def run_books():
        # Batch mode: a book waiting for a batch is pending (its chunks and assembly calls are checkpointed).
        return batch.check(map_ordered(batch.deferrable(lambda b: process_book(llm, b, args, pool)), books,
                                       task_threads(args.num_workers, len(books)), desc="books",
                                       return_exceptions=True))

    try:
        results = batch.run_stage(llm, run_books, batch.state_path(args.output_dir, "construction"), args,
                                  "construction")
    except BaseException:
        record.save(llm, status="stopped")
        lock.release()
        raise
    rows = []
    for b, r in zip(books, results):
        if isinstance(r, CoserError):
            if not isinstance(r, InputError):
                raise r   # endpoint/config failures stop the run: the other books would fail too
            errors.append(str(r))
            print(f"error: {r}", file=sys.stderr)
        elif isinstance(r, Exception):
            errors.append(f"{b['title']}: {type(r).__name__}: {r}")
            print(f"error: {b['title']}: unexpected {type(r).__name__}: {r}", file=sys.stderr)
        else:
            rows.append(r)
            if r.get("failures"):
                record.log.warning("%s: %d unusable replies (rejected and regenerated, or left out)",
                                   r["title"], r["failures"])
    for e in errors:
        record.log.error("%s", e)
    if rows:
        print_summary(rows)
    cli.finish(args.output_dir, args, "construction", extra={"books": rows, "errors": errors})
    for r in rows:
        record.add(output=final_path(args.output_dir, r["title"]), seconds=r.get("seconds"))
    record.data["books"] = rows
    record.save(llm, status="finished with errors" if errors else "finished")
    lock.release()
    return 2 if errors else 0


if __name__ == "__main__":
    cli.main(main)
