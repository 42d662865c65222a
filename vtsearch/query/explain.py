"""Where the fusion scorer looks in an indexed image for each token of a text."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import QueryError
from ..records import AttentionMap
from .context import QueryContext
from .images import indexed_row
from .search import MAX_QUERY_CHARS, check_text


def explain(context: QueryContext, image_id: int, text: str) -> AttentionMap:
    """The scorer's cross-attention weights over the image's regions per token of
    ``text``, mean over layers and heads."""
    text = check_text(text)[:MAX_QUERY_CHARS]
    reranker = context.load_reranker()
    if reranker is None:
        raise QueryError("this index has no region features (its encoder has no patch tokens), "
                         "so there is no fusion scorer to explain")
    row = indexed_row(image_id, context)
    encoder = context.encoder
    features = encoder.encode_text_features([text])
    tokens = features.tokens[0]  # (T, D)
    stage1 = float(context.catalog.vectors([image_id], context.embed_dim)[0] @ features.vectors[0])
    cache = context.load_read_cache()  # the image as a search's shortlist read it: the same score
    image = (cache.images([image_id]) if cache is not None and cache.reranker is reranker
             else context.load_region_source().regions([image_id]))
    output = reranker.rerank(tokens, features.ids[0], np.array([stage1], dtype=np.float32), image,
                             need_weights=True, hidden=None if features.hidden is None else features.hidden[0])
    weights = torch.stack(output.attention).mean(dim=0)[0]  # layers × (1, T, R) → (T, R)
    return AttentionMap(
        image_id=image_id, text=text, tokens=encoder.token_strings(text, len(tokens)),
        weights=weights.tolist(), grid=context.layout.grid,
        crop=encoder.region_crop(row.width, row.height), stage1_score=stage1,
        match_logit=float(output.match_logit[0]), score=float(output.final[0]),
        reranks=reranker.changes_order,
    )
