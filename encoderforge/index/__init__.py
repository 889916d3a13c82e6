"""Retrieval indexes: dense vectors over faiss (dense.py, with an atomic, checksummed directory format in
manifest.py), BM25 (bm25.py), resumable corpus builds (build.py), and the trec_eval-exact metrics (metrics.py)."""
