"""The pull sync: page application, the partner lock, run orchestration."""
