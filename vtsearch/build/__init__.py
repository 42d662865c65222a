"""The build path: image files in; catalog rows, vectors and regions out.

:mod:`.pipeline` runs a build from start to end; :mod:`.scan` and :mod:`.plan` decide
what to encode; an engine (:mod:`.local`, or Ray in :mod:`.distributed`) decodes,
encodes and commits.
"""
