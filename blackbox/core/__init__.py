"""The contract: what a point, an experiment, a search space, an output line, a record and the failure policy are;
NOMAD's files; the folders, caches and stores of a study. No torch, no optional dependency: every layer above
builds on it (``docs/architecture.md``)."""
