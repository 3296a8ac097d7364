"""KServe v2 over gRPC beside REST: Triton's own gRPC client gets REST's answer for the same image; malformed
messages get a gRPC status with a reason (never a crash); the API key guards gRPC as it guards REST."""

from __future__ import annotations

import base64
import threading
import time

import grpc
import httpx
import numpy as np
import pytest

from tests.helpers import noise_png

from .conftest import CLASSES, Server, bodies_held, hold_bodies

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def grpc_server(files):
    srv = Server(files["small"], "--name", "small", "--max-body-mb", "1", "--body-timeout", "3", grpc=True)
    yield srv
    assert srv.stop() == 0


def _rest_probabilities(server: Server, image: bytes) -> np.ndarray:
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}]
    }
    answer = httpx.post(f"{server.url}/v2/models/small/infer", json=body, timeout=30).json()
    out = next(o for o in answer["outputs"] if o["name"] == "probabilities")
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.mark.slow
def test_tritonclient_grpc_gets_the_rest_answer(grpc_server):
    client = tritonclient_grpc.InferenceServerClient(grpc_server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("small")
    meta = client.get_model_metadata("small")
    assert meta.name == "small" and [i.name for i in meta.inputs] == ["image", "input"]
    image = noise_png(seed=21)
    data = tritonclient_grpc.InferInput("image", [1], "BYTES")
    data.set_data_from_numpy(np.array([image], dtype=np.object_))
    result = client.infer("small", [data], outputs=[tritonclient_grpc.InferRequestedOutput("probabilities")])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, len(CLASSES)) and abs(probabilities.sum() - 1) < 1e-5
    assert np.allclose(probabilities, _rest_probabilities(grpc_server, image), atol=1e-6)  # the same service
    tensor = tritonclient_grpc.InferInput("input", [2, 3, 32, 32], "FP32")  # preprocessed inputs, batched
    tensor.set_data_from_numpy(np.zeros((2, 3, 32, 32), dtype=np.float32))
    both = client.infer("small", [tensor])
    assert both.as_numpy("probabilities").shape == (2, len(CLASSES)) and both.as_numpy("top1").shape == (2,)


def _call(target: str, request, metadata=()):
    from alexnet.inference.serving.grpc_service import stub

    with grpc.insecure_channel(target) as channel:
        return stub(channel).ModelInfer(request, metadata=metadata, timeout=30)


def _request(**fields):
    from alexnet.inference.serving.grpc_service import protocol

    return protocol().ModelInferRequest(**fields)


@pytest.mark.slow
def test_malformed_messages_get_a_status_with_a_reason(grpc_server):
    from alexnet.inference.serving.grpc_service import protocol

    pb = protocol()
    tensor = pb.ModelInferRequest.InferInputTensor
    image = noise_png(seed=3)
    cases = [
        (_request(model_name="small"), grpc.StatusCode.INVALID_ARGUMENT, "exactly one input"),
        (
            _request(model_name="nope", inputs=[tensor(name="image", datatype="BYTES", shape=[1])]),
            grpc.StatusCode.NOT_FOUND,
            "no model",
        ),
        (
            _request(
                model_name="small", inputs=[tensor(name="x", datatype="INT8", shape=[1])], raw_input_contents=[b"\x00"]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "datatype",
        ),
        (
            _request(
                model_name="small",
                inputs=[tensor(name="image", datatype="BYTES", shape=[1])],
                raw_input_contents=[b"\xff\xff\xff\x7f" + image[:10]],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
        ),
        (
            _request(
                model_name="small",
                inputs=[
                    tensor(
                        name="image",
                        datatype="BYTES",
                        shape=[1],
                        contents=pb.InferTensorContents(bytes_contents=[b"not an image"]),
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
        ),
        (
            _request(
                model_name="small",
                inputs=[
                    tensor(
                        name="input",
                        datatype="FP32",
                        shape=[1, 3, 8, 8],
                        contents=pb.InferTensorContents(fp32_contents=[0.0] * 192),
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "this model takes",
        ),
        (
            _request(
                model_name="small",
                inputs=[tensor(name="input", datatype="FP32", shape=[1, 3, 32, 32])],
                raw_input_contents=[b"\x00" * 10],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FP32",
        ),
        (
            _request(
                model_name="small",
                inputs=[tensor(name="image", datatype="BYTES", shape=[1])],
                raw_input_contents=[b"\x00" * (2 << 20)],
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
    ]
    for request, code, reason in cases:
        with pytest.raises(grpc.RpcError) as err:
            _call(grpc_server.grpc, request)
        assert err.value.code() == code, (code, err.value.details())
        assert reason in (err.value.details() or "") and err.value.details()
    # The server goes on answering, over both protocols.
    ok = _request(
        model_name="small",
        inputs=[
            tensor(name="image", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[image]))
        ],
    )
    assert len(_call(grpc_server.grpc, ok).raw_output_contents) == 2
    assert httpx.get(f"{grpc_server.url}/v2/health/ready").status_code == 200


@pytest.mark.slow
def test_the_api_key_guards_grpc_too(files):
    srv = Server(files["small"], "--name", "small", "--api-key", "s3cret-key-0123456789", grpc=True)
    try:
        from alexnet.inference.serving.grpc_service import protocol

        pb = protocol()
        request = _request(
            model_name="small",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="image",
                    datatype="BYTES",
                    shape=[1],
                    contents=pb.InferTensorContents(bytes_contents=[noise_png()]),
                )
            ],
        )
        with pytest.raises(grpc.RpcError) as err:
            _call(srv.grpc, request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(_call(srv.grpc, request, metadata=[("x-api-key", "s3cret-key-0123456789")]).outputs) == 2

        # A call without the key is refused before its message is waited for.
        error, seconds = _ended_before_its_message(srv.grpc, request, 60)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and seconds < 10
    finally:
        assert srv.stop() == 0


def test_grpc_messages_count_against_the_body_budget(files):
    """A gRPC message, received whole before its handler runs, is held against --body-budget-mb with the REST
    bodies until answered: one with no room left gets UNAVAILABLE (REST's 503), smaller ones are served."""
    from alexnet.inference.serving.grpc_service import protocol

    pb = protocol()
    flags = ["--name", "small", "--max-body-mb", "1", "--body-budget-mb", "2", "--body-timeout", "20"]
    srv = Server(files["small"], *flags, grpc=True)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[40, 3, 32, 32])
    tensor.contents.fp32_contents.extend([0.5] * (40 * 3 * 32 * 32))  # 491,520 bytes
    large = _request(model_name="small", inputs=[tensor])
    image = pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[noise_png()])
    )
    try:
        holding = hold_bodies(srv, 2, 900_000)  # REST bodies: 1,800,000 of 2,097,152 bytes held
        with pytest.raises(grpc.RpcError) as err:
            _call(srv.grpc, large)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "budget of 2 MiB" in err.value.details()
        assert len(_call(srv.grpc, _request(model_name="small", inputs=[image])).outputs) == 2
        for s in holding:
            s.close()
        assert bodies_held(srv, until=0) == 0
        assert len(_call(srv.grpc, large).outputs) == 2
        assert bodies_held(srv) == 0  # given back once answered
    finally:
        assert srv.stop() == 0


def test_refused_large_messages_are_not_kept(files):
    """A refused call's message goes when its call does. grpc.aio keeps an aborted call's exception in a reference
    cycle with the handler's frame (and its 15 MiB message) until the cyclic collector runs: 150 such calls, one at
    a time, left the service 1 GB larger. Refusals are set on the context instead, and large messages' freed memory
    is handed back to the OS."""
    from alexnet.inference.serving.grpc_service import protocol

    pb = protocol()
    junk = pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"\0" * 15 * 2**20])
    )
    refused = [_request(model_name="small", inputs=[junk]), _request(model_name="other", inputs=[junk])]
    srv = Server(files["small"], "--name", "small", grpc=True)  # messages up to 16 MiB

    def rss_mb() -> float:
        with open(f"/proc/{srv.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    def send(count: int) -> None:
        for i in range(count):  # not an image (INVALID_ARGUMENT), not this model (NOT_FOUND)
            with pytest.raises(grpc.RpcError) as err:
                _call(srv.grpc, refused[i % 2])
            assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)

    try:
        send(4)  # warm-up: the allocator's arenas, grpc's buffers
        time.sleep(0.5)
        before = rss_mb()
        send(40)  # 600 MiB in all
        deadline = time.time() + 5  # the last messages' memory goes back once their calls have ended
        while rss_mb() - before >= 150 and time.time() < deadline:
            time.sleep(0.1)
        assert rss_mb() - before < 150, (before, rss_mb())  # +24-30 MB alone, +80 in the full suite; +295 before
    finally:
        assert srv.stop() == 0


def _streamed(target: str, messages, timeout: float = 30, method: str = "ModelInfer"):
    """``method`` called as a client stream (on the wire, a unary call is one whose stream holds one message)."""
    from alexnet.inference.serving.grpc_service import CALLS, SERVICE, protocol

    pb = protocol()
    request, response = CALLS[method]
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_unary(
            f"/{SERVICE}/{method}",
            request_serializer=getattr(pb, request).SerializeToString,
            response_deserializer=getattr(pb, response).FromString,
        )
        return call(messages, timeout=timeout)


def _ended_before_its_message(
    target: str, request, after: float, method: str = "ModelInfer"
) -> tuple[grpc.RpcError, float]:
    """A ModelInfer call whose one message would come ``after`` seconds: the error the server ended it with first, and
    the seconds that took (the client waits up to ``after`` + 10 s; its message is released when the call ends)."""
    done = threading.Event()

    def late():
        done.wait(after)
        yield request

    start = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as err:
            _streamed(target, late(), timeout=after + 10, method=method)
    finally:
        done.set()
    return err.value, time.monotonic() - start


def test_a_message_that_does_not_arrive_in_time_ends_its_call(grpc_server):
    """grpc calls a unary handler only once the whole message has arrived, and waits for it without end: a client
    trickling its message (or sending none) held a call, one of the server's limited slots, for as long as it liked,
    where REST's bodies have --body-timeout. Every method's message is now read by its handler under --body-timeout
    (3 s here): DEADLINE_EXCEEDED, the call's slot and buffers freed. One message a call, as a unary call has."""
    from alexnet.inference.serving.grpc_service import protocol

    pb = protocol()
    image = pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[noise_png()])
    )
    request = _request(model_name="small", inputs=[image])

    error, seconds = _ended_before_its_message(grpc_server.grpc, request, 8)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert "did not arrive within 3 s" in error.details()
    assert seconds < 7  # the server's deadline, not the client's
    error, seconds = _ended_before_its_message(grpc_server.grpc, pb.ServerLiveRequest(), 8, "ServerLive")
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and seconds < 7  # every method, a health check too
    with pytest.raises(grpc.RpcError) as err:
        _streamed(grpc_server.grpc, iter([request, request]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one request message" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        _streamed(grpc_server.grpc, iter([]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no request message" in err.value.details()
    assert len(_streamed(grpc_server.grpc, iter([request])).outputs) == 2
    assert len(_call(grpc_server.grpc, request).outputs) == 2  # a unary client, as before
