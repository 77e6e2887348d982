"""stabench: a declarative benchmark suite and leaderboard for LLM training-stability methods."""

__version__ = "0.1.0"
