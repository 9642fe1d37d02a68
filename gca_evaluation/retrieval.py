"""Thin re-export: retrieval lives in coser/retrieval.py (shared with the web app's scenes)."""
from coser.retrieval import (BM25, CHUNK_OVERLAP, CHUNK_SIZE, HEADERS, MODES, TITLES, BookStore,  # noqa: F401
                             Embedder, EmbeddingIndex, Retriever, Retrievers, build_corpora, build_retrievers,
                             character_database, chunk_corpus, split_text)
