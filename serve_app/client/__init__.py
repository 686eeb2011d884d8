"""The Python client of the samgraph HTTP API, shared by the CLI, the tests and the benchmarks.

    from serve_app.client import SamgraphClient
    with SamgraphClient("http://127.0.0.1:8000") as api:
        api.segment({"prompts": [{"box_xyxy": [10, 20, 300, 400]}]}, image=Path("photo.jpg").read_bytes())

* :mod:`.api`: :class:`SamgraphClient`, one public method per route;
* :mod:`.errors`: what its calls raise.

``httpx`` is imported when a client is made, not with this package.
"""

from serve_app.client.api import API_KEY_ENV, SamgraphClient
from serve_app.client.errors import ApiResponseError, ApiStreamError, ApiUnreachable, ClientError

__all__ = ["API_KEY_ENV", "ApiResponseError", "ApiStreamError", "ApiUnreachable", "ClientError", "SamgraphClient"]
