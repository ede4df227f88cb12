"""shoplens.cloud: the FastAPI search service over Milvus (Lite file or server by URI).

Needs the ``cloud`` extra only: no torch or tensorflow in this process.
"""
