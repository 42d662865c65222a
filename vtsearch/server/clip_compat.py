"""clip-retrieval's back-end routes, so its ``ClipClient`` and web front work against a
vtsearch server unchanged (with vtsearch's reranking on text queries).

The request and response shapes follow clip-retrieval 2.45.0's ``clip back``:
``POST /knn-service``, ``POST /metadata``, ``GET /indices-list``, ``GET /config.json``.
Differences, on purpose: a request without a query gets 400 with a message (not 500),
and ``image_url`` is answered only when it names an image on this server (this server
fetches nothing from elsewhere). ``deduplicate`` drops a result within 0.94 cosine of a
better ranked one (clip-retrieval groups them by connected components instead); the
safety and aesthetic options are accepted and ignored.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..query.search import MAX_K
from ..records import SearchResult
from .context import ServerContext
from .library import MAX_IMAGE_ID, ServedIndex
from .limits import HTTPError, shown
from .params import boolean, integer, read_fields, string
from .responses import JSONResponse

PATHS = ("/knn-service", "/metadata", "/indices-list", "/config.json")
LOCAL_IMAGE = re.compile(r"^/api/images/([0-9]{1,19})(?:/thumbnail)?$")
FLOAT32_MAX = float(np.finfo(np.float32).max)

Query = str | bytes | int | list[float]  # text, an upload, an image of this server, a vector


class ClipRetrievalRoutes:
    """The routes of clip-retrieval's ``clip back`` over the indexes of a :class:`ServerContext`."""

    def __init__(self, context: ServerContext):
        self.context = context
        self.library = context.library

    async def indices_list(self, _request: Request) -> Response:
        return JSONResponse(self.library.names)

    async def config(self, request: Request) -> Response:
        return JSONResponse({"defaultBackend": str(request.base_url).rstrip("/"),
                             "defaultIndex": self.library.names[0], "urlColumn": "url"})

    async def knn_service(self, request: Request) -> Response:
        fields = await read_fields(request)
        served = self.library.get(string(fields, "indice_name"))
        modality = fields.get("modality", "image")
        if modality not in ("image", "text"):
            raise HTTPError(400, f"modality must be \"image\" or \"text\", got {shown(modality)}")
        num_images = integer(fields, "num_images", 40, 1, MAX_K)
        count = max(num_images, integer(fields, "num_result_ids", num_images, 1, MAX_K))
        query = await self._query(fields, request, served)
        if modality == "text":
            return await self._describe(served, query, count)
        hits = await self._search(served, query, count, boolean(fields, "deduplicate", False))
        results: list[dict[str, Any]] = [{"id": hit.id, "similarity": hit.score} for hit in hits]
        first = results[:num_images]
        metadata = await self._metadata(served, [item["id"] for item in first], request, thumbnails=True)
        for item, extra in zip(first, metadata):
            item.update(extra["metadata"])
        return JSONResponse(results)

    async def metadata(self, request: Request) -> Response:
        fields = await read_fields(request)
        served = self.library.get(string(fields, "indice_name"))
        ids = fields.get("ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise HTTPError(400, "ids must be a list of integers")
        if len(ids) > MAX_K:
            raise HTTPError(400, f"at most {MAX_K} ids at a time")
        if not all(0 <= i <= MAX_IMAGE_ID for i in ids):
            raise HTTPError(400, f"ids are between 0 and {MAX_IMAGE_ID}")
        return JSONResponse(await self._metadata(served, ids, request, thumbnails=False))

    def routes(self) -> list[Route]:
        return [
            Route("/indices-list", self.indices_list),
            Route("/config.json", self.config),
            Route("/knn-service", self.knn_service, methods=["POST"]),
            Route("/metadata", self.metadata, methods=["POST"]),
        ]

    async def _search(self, served: ServedIndex, query: Query, count: int, deduplicate: bool) -> list[SearchResult]:
        """Images for a query of ``modality`` "image"; text queries are reranked."""
        index, run = served.index, self.context.run
        if isinstance(query, list):
            return await run(served, index.search_vector, query, k=count, deduplicate=deduplicate)
        if isinstance(query, str):
            response = await run(served, index.query, query, k=count, recall_k=None, deduplicate=deduplicate)
        else:
            response = await run(served, index.query, image=query, k=count, deduplicate=deduplicate)
        return response.results

    async def _describe(self, served: ServedIndex, query: Query, count: int) -> Response:
        """Texts of the collection for an image (``modality`` "text")."""
        if isinstance(query, str):
            raise HTTPError(400, "modality \"text\" searches the text collection by image; "
                                 "for a text query use modality \"image\"")
        if isinstance(query, list):
            raise HTTPError(400, "embedding_input is supported with modality \"image\" only")
        response = await self.context.run(served, served.index.match, query, k=count, recall_k=None)
        return JSONResponse([{"id": r.id, "similarity": r.score, "caption": r.text, "text": r.text}
                             for r in response.results])

    async def _query(self, fields: dict[str, Any], request: Request, served: ServedIndex) -> Query:
        """The query, by clip-retrieval's precedence: text > image > image_url > embedding_input."""
        text = string(fields, "text")
        if text is not None and text.strip():
            return text
        image = await self.context.upload(fields, "image")
        if image is not None:
            return image
        url = string(fields, "image_url")
        if url is not None:
            return _local_image_id(url, request, served)
        embedding = fields.get("embedding_input")
        if embedding is not None and embedding != []:
            return _embedding(embedding, served.index.embed_dim)
        raise HTTPError(400, "give a query: text, image (base64), image_url or embedding_input")

    async def _metadata(self, served: ServedIndex, ids: list[int], request: Request,
                        thumbnails: bool) -> list[dict[str, Any]]:
        """clip-retrieval's metadata for image ids, in order: url, image_path, caption, size, and
        with ``thumbnails`` the base64 JPEG thumbnail as ``image``."""
        rows = served.indexed_rows(ids)
        base = str(request.base_url).rstrip("/")
        items = []
        for image_id in ids:
            row = rows.get(image_id)
            if row is None:
                items.append({"id": image_id, "metadata": {}})
                continue
            data: dict[str, Any] = {"url": base + served.image_url(image_id), "image_path": row.path,
                                    "caption": None, "width": row.width, "height": row.height}
            if thumbnails:
                try:
                    jpeg = await self.context.thumbnail(served, row)
                    data["image"] = base64.b64encode(jpeg).decode("ascii")
                except HTTPError as error:
                    if error.status not in (404, 409):  # a file gone or changed: the item, without its picture
                        raise
            items.append({"id": image_id, "metadata": data})
        return items


def _embedding(value: Any, dim: int) -> list[float]:
    """A query vector: ``dim`` finite numbers, not all zero (the vector is normalised; NaN,
    Infinity or a number past float32's range would leave nothing to compare)."""
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise HTTPError(400, "embedding_input must be a list of numbers")
    if len(value) != dim:
        raise HTTPError(400, f"embedding_input has {len(value)} numbers; this index's vectors have {dim}")
    try:
        vector = np.array(value, dtype=np.float64)
    except OverflowError:  # an integer past float64
        raise HTTPError(400, "embedding_input holds a number too large for a vector") from None
    largest = float(np.max(np.abs(vector)))
    if not math.isfinite(largest) or largest > FLOAT32_MAX:
        raise HTTPError(400, "embedding_input must hold finite numbers within float32's range "
                             "(no NaN or Infinity)")
    if largest == 0.0:
        raise HTTPError(400, "embedding_input is all zeros: it has no direction to search in")
    return (vector / largest).tolist()  # the same direction; its length cannot overflow float32


def _local_image_id(url: str, request: Request, served: ServedIndex) -> int:
    """The id of an image of this server named by its URL (ours: thumbnail or original)."""
    try:
        parts = urlsplit(url)
        named = parse_qs(parts.query).get("index", [served.name])[0]
    except ValueError:  # e.g. "http://[not-an-address"
        raise HTTPError(400, f"image_url is not a URL: {shown(url)}") from None
    match = LOCAL_IMAGE.match(parts.path)
    same_host = not parts.netloc or parts.netloc == request.url.netloc
    if not (match and same_host and named == served.name):
        raise HTTPError(400, "this server does not fetch images from other addresses (image_url); "
                             "send the image itself in \"image\" (base64)")
    image_id = int(match.group(1))
    served.row(image_id)
    return image_id
