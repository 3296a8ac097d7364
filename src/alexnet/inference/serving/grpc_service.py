"""The Open Inference Protocol (KServe v2) over gRPC, beside REST: ``GRPCInferenceService`` with live, ready, model
metadata and infer, on its own port (``alexnet serve --grpc-port``).

It is the same service as REST's: the same batcher and queue, request size limit, decoding budget, timeouts and API
key (gRPC metadata ``x-api-key``, or ``authorization: Bearer ...``). A request REST would answer with an HTTP error
gets the matching gRPC status with the same reason. The messages come from ``predict_v2.proto``, compiled when the
server starts (grpcio-tools' protoc) into a descriptor pool of their own: a process that also imports Triton's client
(whose messages share the protocol's names in the default pool) is no conflict.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import tempfile
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
from starlette.exceptions import HTTPException

from .protocol import MAX_ELEMENTS, ProtocolError, build_input

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
CALLS = {  # method → (request, response) message names
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}
UNGUARDED = {"ServerLive", "ServerReady"}  # health checks answer without the API key, as REST's do
# HTTP statuses the REST service raises → gRPC's codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@functools.cache
def protocol() -> SimpleNamespace:
    """The protocol's message classes by name (``protocol().ModelInferRequest``...), from ``predict_v2.proto``."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    source = resources.files("alexnet.inference.serving") / "predict_v2.proto"
    with tempfile.TemporaryDirectory() as tmp, resources.as_file(source) as proto:
        out = Path(tmp, "predict_v2.pb")
        if protoc.main(["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", proto.name]) != 0:
            raise RuntimeError(f"protoc could not compile {proto}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    classes = message_factory.GetMessages(list(files), pool=pool)
    return SimpleNamespace(**{name.split(".", 1)[1]: cls for name, cls in classes.items() if name.count(".") == 1})


def stub(channel: grpc.Channel) -> SimpleNamespace:
    """A client for ``channel``: ``stub(channel).ModelInfer(request, metadata=..., timeout=...)``."""
    pb = protocol()
    return SimpleNamespace(
        **{
            method: channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=getattr(pb, request).SerializeToString,
                response_deserializer=getattr(pb, response).FromString,
            )
            for method, (request, response) in CALLS.items()
        }
    )


def build_server(service: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A gRPC server (not yet started) answering for ``service``, the REST app's `_Service`, and the port it is
    bound to (the system's choice for ``port`` 0)."""
    pb = protocol()
    limit = service.max_body + (1 << 16)  # the body limit, plus room for the message's own fields

    class Servicer:
        async def ServerLive(self, request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=service.ready and service.batcher.alive)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            if refused := _check_model(service, request.name):
                return _refuse(context, refused, pb.ModelReadyResponse())
            return pb.ModelReadyResponse(ready=service.ready and service.batcher.alive)

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            if refused := _check_model(service, request.name):
                return _refuse(context, refused, pb.ModelMetadataResponse())
            meta = service.metadata()
            tensors = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[tensors(**t) for t in meta["inputs"]],
                outputs=[tensors(**t) for t in meta["outputs"]],
            )

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            if refused := _check_model(service, request.model_name):
                return _refuse(context, refused, pb.ModelInferResponse())
            try:
                with service.holding(request.ByteSize()):  # the message counts against the body budget, as a body does
                    outputs = await service.infer_outputs(_input(request))
                    return _response(pb, service.name, request, outputs)
            except ProtocolError as err:
                refused = (grpc.StatusCode.INVALID_ARGUMENT, str(err))
            except HTTPException as err:
                refused = (CODES.get(err.status_code, grpc.StatusCode.INTERNAL), str(err.detail))
            return _refuse(context, refused, pb.ModelInferResponse())

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        maximum_concurrent_rpcs=4 * service.settings.max_queue + 256,
    )
    servicer = Servicer()

    def reading(method: str, response: Any) -> Any:
        """``method``'s handler reading its message itself, as a client stream's: on the wire a unary call is a stream
        of one message, and grpc calls a unary handler only once that has arrived, waiting for it without end (a
        client trickling its message, or sending none, held a call, one of `maximum_concurrent_rpcs`, as long as it
        liked). The API key, where the method asks for one, is checked before the message is waited for."""
        handle, keyed = getattr(servicer, method), method not in UNGUARDED

        async def handler(requests: Any, context: Any) -> Any:
            if keyed and (refused := _check_key(service, context)):
                return _refuse(context, refused, response())
            seconds = service.settings.body_timeout_s
            try:
                request = await _one_message(requests, seconds)
            except ProtocolError as err:
                return _refuse(context, (grpc.StatusCode.INVALID_ARGUMENT, str(err)), response())
            except TimeoutError:
                late = (grpc.StatusCode.DEADLINE_EXCEEDED, f"the request message did not arrive within {seconds:g} s")
                return _refuse(context, late, response())
            return await handle(request, context)

        return handler

    handlers = {
        method: grpc.stream_unary_rpc_method_handler(
            reading(method, getattr(pb, response)),
            request_deserializer=getattr(pb, request).FromString,
            response_serializer=getattr(pb, response).SerializeToString,
        )
        for method, (request, response) in CALLS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound


def _check_key(service: Any, context: Any) -> tuple[grpc.StatusCode, str] | None:
    """The API key, when the server has one, as REST checks it: the status refusing the call, or None."""
    key = service.settings.api_key
    if key is not None:
        metadata = dict(context.invocation_metadata() or ())
        given = metadata.get("x-api-key", "")
        auth = metadata.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        if not hmac.compare_digest(str(given).encode(), key.encode()):
            return grpc.StatusCode.UNAUTHENTICATED, "a valid API key is required (x-api-key metadata)"
    return None


def _check_model(service: Any, name: str) -> tuple[grpc.StatusCode, str] | None:
    """The model a call names (after its key, which every method but the health checks has checked before reading
    the message): the status refusing the call, or None."""
    if name != service.name:
        return grpc.StatusCode.NOT_FOUND, f"no model {name!r}; this server has {service.name!r}"
    return None


def _refuse(context: Any, status: tuple[grpc.StatusCode, str], empty: Any) -> Any:
    """The call ended with ``status`` (code, details), set on ``context`` rather than raised with ``context.abort``:
    grpc.aio keeps an aborted call's exception in a reference cycle with the handler's frame, which holds the request
    until the cyclic collector runs (measured: 150 messages of 15 MiB refused one at a time left the service 1 GB
    larger; set, 70 MB)."""
    context.set_code(status[0])
    context.set_details(status[1])
    return empty


async def _one_message(requests: Any, seconds: float) -> Any:
    """The call's one message, and the end of its stream, within ``seconds`` (REST's body timeout).

    Raises:
        TimeoutError: they did not arrive in time; ProtocolError: no message, or more than one.
    """
    async with asyncio.timeout(seconds):
        message = await anext(requests, None)
        if message is None:
            raise ProtocolError("no request message: a call carries one")
        if await anext(requests, None) is not None:
            raise ProtocolError("one request message per call, as a unary call sends")
    return message


def _input(request: Any) -> Any:
    """The request's one input as REST's `InferInput`: from ``raw_input_contents`` (what tritonclient sends) or
    the typed ``contents``."""
    if len(request.inputs) != 1:
        raise ProtocolError("the request must have exactly one input")
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    if len(request.raw_input_contents) > 1:
        raise ProtocolError("one input takes one raw_input_contents entry")
    raw = bytes(request.raw_input_contents[0]) if request.raw_input_contents else None
    if raw is None and tensor.datatype == "BYTES":
        elements = list(tensor.contents.bytes_contents)
        if len(elements) > MAX_ELEMENTS:
            raise ProtocolError(f"at most {MAX_ELEMENTS} images in one request")
        return build_input(tensor.name, tensor.datatype, shape, images=elements)
    if raw is None:
        return build_input(tensor.name, tensor.datatype, shape, values=list(tensor.contents.fp32_contents))
    return build_input(tensor.name, tensor.datatype, shape, raw=raw)


def _response(pb: Any, model: str, request: Any, outputs: dict[str, np.ndarray]) -> Any:
    """The outputs asked for (all by default) as ``raw_output_contents``, as Triton answers."""
    wanted = [o.name for o in request.outputs] or list(outputs)
    response = pb.ModelInferResponse(model_name=model, model_version="1", id=request.id)
    for name in wanted:
        if name not in outputs:
            continue
        array = outputs[name]
        datatype = "FP32" if array.dtype == np.float32 else "INT64"
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(array.astype("<f4" if datatype == "FP32" else "<i8").tobytes())
    return response
