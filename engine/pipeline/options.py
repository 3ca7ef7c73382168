"""What a person chooses among, for the CLI's flags and the Settings dialog: the engine, whether
the answering model answers, and how passages are ranked. The values are the engine's own;
this is where the app finds them."""

from engine.answering.conversation import RANKINGS
from engine.backends.loading import ANSWERING, BACKENDS, answering_expected, default_answering
from engine.recall.ranking import ANSWERING_RANKING, DEFAULT_RANKING, RERANK_POOL

__all__ = ["ANSWERING", "ANSWERING_RANKING", "BACKENDS", "DEFAULT_RANKING", "RANKINGS", "RERANK_POOL",
           "answering_expected", "default_answering"]
