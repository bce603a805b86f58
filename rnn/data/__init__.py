"""The data stages (ingest, vocabulary, partition) and what they read with: fetching a source,
DVC-tracked corpora, text cleaning, and an ordered thread map."""
