"""shoplens: search-by-image shopping.

The phone detects the product (YOLO), embeds the crop (ResNet + 256-d head) and
uploads only the vector; the cloud searches the catalog in Milvus.

Subpackages map to the repository's top-level folders:
``shoplens.converters`` -> ``converters/``, ``shoplens.sdk`` -> ``sdk_python/``,
``shoplens.cloud`` -> ``cloud/``; ``shoplens.contract`` is the one module both
sides of the wire import.
"""

__version__ = "0.1.0"
