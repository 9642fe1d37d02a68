"""The web app's data: the final book files and an optional test set, loaded once and indexed for search."""
from __future__ import annotations

from ..errors import InputError
from ..io import read_json
from ..persona import book_files, load_book

SEARCH_LIMIT = 200
# What the scene engine reads of a test item; a malformed item is refused before any LLM call.
SCENE_FIELDS = {"book": str, "i_p": int, "i_c": int, "scenario": str, "plot": dict, "dialogues": list,
                "speaking_characters_w_env": list, "major_characters": list, "character_profiles": dict}


class Library:
    """The final book files and an optional test set, loaded once and indexed for search."""

    def __init__(self, book_data: str | None, test_file: str | None):
        self.books: dict[str, dict] = {}
        self.skipped: list[str] = []
        if book_data:
            for name, path in book_files(book_data):
                try:
                    self.books[name] = load_book(path)
                except InputError as e:  # a folder may hold other JSON (test sets, run records)
                    self.skipped.append(str(e))
        self.test_file = test_file
        self.items = []
        if test_file:
            items = read_json(test_file, "test set")
            if not isinstance(items, list):
                raise InputError(f"{test_file}: expected a JSON list of test items")
            self.items = items
        self.index = []
        for book, data in self.books.items():
            for name, entry in data["character_datasets"].items():
                if not isinstance(entry, dict):
                    continue
                self.index.append({"book": book, "name": name,
                                   "utterances": len(entry.get("utterances") or []),
                                   "conversations": len(entry.get("conversations") or [])})
        self.index.sort(key=lambda r: (-r["utterances"], r["name"], r["book"]))

    def search(self, q: str) -> list[dict]:
        q = q.strip().lower()
        hits = [r for r in self.index if not q or q in r["name"].lower() or q in r["book"].lower()]
        # A name hit ranks above a book-title hit.
        hits.sort(key=lambda r: (0 if q and q in r["name"].lower() else 1))
        return hits[:SEARCH_LIMIT]

    def book_list(self) -> list[dict]:
        return [{"book": b, "characters": len(d["character_datasets"]), "plots": len(d["plots"])}
                for b, d in self.books.items()]

    def entry(self, book: str, name: str) -> tuple[dict, dict]:
        data = self.books.get(book)
        if data is None:
            raise InputError(f"book {book!r} not found")
        entry = data["character_datasets"].get(name)
        if not isinstance(entry, dict):
            raise InputError(f"character {name!r} not found in {book!r}")
        return data, entry

    def character(self, book: str, name: str) -> dict:
        """Profile, plots and the conversations the character is in (every line, own ones flagged)."""
        data, entry = self.entry(book, name)
        plots = {}
        for p in entry.get("plots") or []:
            if isinstance(p, dict) and isinstance(p.get("i_p"), int):
                plots[p["i_p"]] = {"i_p": p["i_p"], "description": str(p.get("description") or ""),
                                   "experience": str(p.get("experience") or ""), "summary": "", "conversations": []}
        for c in entry.get("conversations") or []:
            if not isinstance(c, dict):
                continue
            i_p, i_c = c.get("i_p"), c.get("i_c")
            try:
                conv = data["plots"][i_p]["conversation"][i_c]
            except (IndexError, KeyError, TypeError):
                continue
            if not isinstance(conv, dict):
                continue
            lines = [{"character": str(d.get("character") or d.get("name") or ""), "message": str(d.get("message") or ""),
                      "own": (d.get("character") or d.get("name")) == name}
                     for d in conv.get("dialogues") or [] if isinstance(d, dict)]
            plot = plots.setdefault(i_p, {"i_p": i_p, "description": "", "experience": "", "summary": "",
                                          "conversations": []})
            plot["conversations"].append({"i_c": i_c, "scenario": str(conv.get("scenario") or ""),
                                          "motivation": str(c.get("motivation") or c.get("thought") or ""),
                                          "dialogues": lines})
        for i_p, plot in plots.items():
            try:
                plot["summary"] = str(data["plots"][i_p].get("summary") or "")
            except (IndexError, TypeError, AttributeError):
                pass
        return {"book": book, "name": name, "profile": str(entry.get("profile") or ""),
                "utterances": len(entry.get("utterances") or []),
                "plots": [plots[k] for k in sorted(plots, key=lambda x: (not isinstance(x, int), x))]}

    def test_items(self, q: str = "") -> list[dict]:
        q = q.strip().lower()
        out = []
        for i, item in enumerate(self.items):
            if not isinstance(item, dict):
                continue
            chars = [c for c in item.get("speaking_characters_w_env") or [] if c != "Environment"]
            row = {"index": i, "book": str(item.get("book") or ""), "scenario": str(item.get("scenario") or ""),
                   "characters": chars}
            if not q or q in row["book"].lower() or any(q in c.lower() for c in chars):
                out.append(row)
        return out[:SEARCH_LIMIT]

    def item(self, index) -> dict:
        """Test item `index` (field 'test_item'), checked enough for the scene engine to run on it."""
        if not self.test_file:
            raise InputError("no --test_file given to the web app")
        if isinstance(index, bool) or not isinstance(index, (int, str)) or not str(index).strip().isdigit():
            raise InputError("field 'test_item' must be the number of a test item")
        i = int(index)
        if not 0 <= i < len(self.items):
            raise InputError(f"field 'test_item': {i} is out of range (0..{len(self.items) - 1})")
        item = self.items[i]
        where = f"{self.test_file}: test item {i}"
        if not isinstance(item, dict):
            raise InputError(f"{where} is not an object")
        for field, kind in SCENE_FIELDS.items():
            if not isinstance(item.get(field), kind) or (kind is int and isinstance(item.get(field), bool)):
                raise InputError(f"{where}: field '{field}' missing or not {kind.__name__}")
        return item
