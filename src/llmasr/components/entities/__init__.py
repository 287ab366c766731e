"""Entities (names, jargon) for a prompt: a database with a persisted embedding index, and a retriever
that finds the entities an utterance mentions from its speech."""
