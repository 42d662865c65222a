"""Training and evaluating the reranker on captioned images already in an index.

``load_pairs`` reads a captioned set; ``train_reranker`` trains the fusion scorer on it
(``index.save_reranker`` keeps it); ``evaluate`` measures recall before and after
reranking. The stages: ``pairs`` (reading and resolving pairs), ``mining`` (negatives from
the index), ``objective`` (logits and loss), ``validate`` (the fitted ``w``), ``loop``
(the epochs) and ``evaluate``.
"""

from .evaluate import EvalReport, ImageToTextReport, evaluate, recall_at
from .loop import EarlyStopping, EpochRecord, TrainOptions, TrainPlan, TrainReport, train_reranker
from .mining import STOPWORDS, Examples, WordKinds, mine_examples, sample_candidates, swapped_variants
from .objective import listwise_loss, match_logits
from .pairs import Pair, ResolvedPairs, load_pairs, resolve_pairs, split_by_image
from .validate import fit_rerank_weight

__all__ = [
    "train_reranker", "TrainOptions", "TrainPlan", "TrainReport", "EpochRecord", "EarlyStopping",
    "evaluate", "EvalReport", "ImageToTextReport", "recall_at",
    "load_pairs", "Pair", "resolve_pairs", "ResolvedPairs", "split_by_image",
    "mine_examples", "Examples", "sample_candidates", "swapped_variants", "WordKinds",
    "STOPWORDS",
    "match_logits", "listwise_loss", "fit_rerank_weight",
]
