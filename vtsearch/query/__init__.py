"""The query path: a text, an image or a vector in; ranked images (or texts) out.

:mod:`.search` is the entry point for images, :mod:`.match` for texts, :mod:`.explain`
shows where the scorer looks; :mod:`.recall` (stage 1) and :mod:`.rerank` (stage 2) are
the two stages, fed by :mod:`.sources` (regions) and :mod:`.images` (query images).
"""
