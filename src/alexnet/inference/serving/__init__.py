"""``alexnet serve``: an HTTP inference service (a web page, a JSON API, the KServe v2 protocol, Prometheus metrics)
with dynamic batching, on the optional ``[serve]`` extra (Starlette, uvicorn, python-multipart, prometheus-client)."""
