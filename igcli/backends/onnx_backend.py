"""ONNX Runtime behind the Backend interface, running an igcli gradient graph.

CPU: torch tensors cross as numpy views, no copies. CUDA (onnxruntime-gpu): inputs and outputs
stay on the device through IO binding into torch-allocated tensors.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from igcli.backends.onnx.format import GRADS, INPUT, SCORES, WEIGHTS, GradientGraphInfo
from igcli.errors import ModelError, first_line

NUMPY_TYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}
ORT_TYPES = {"tensor(float)": torch.float32, "tensor(double)": torch.float64, "tensor(float16)": torch.float16}


class OnnxRuntimeBackend:
    """Scores and input gradients from one run of a gradient graph on ONNX Runtime."""

    runtime = "onnxruntime"

    def __init__(self, model_bytes: bytes, info: GradientGraphInfo, device: torch.device, threads: int = 0):
        import onnxruntime as ort

        self.device, self.score_kind, self.fixed_batch = device, info.score, info.fixed_batch
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            # The NCHWc layout pass miscomputed gradient graphs (a 5e-3 error on a PaddleOCR model's
            # input gradients, none without it); the gradient check runs with the same setting.
            self.session = ort.InferenceSession(model_bytes, options, providers=_providers(device, ort),
                                                disabled_optimizers=["NchwcTransformer"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own kinds
            raise ModelError(f"onnxruntime cannot load the gradient graph ({first_line(error)})") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if set(inputs) != {INPUT, WEIGHTS} or not {SCORES, GRADS} <= set(outputs):
            raise ModelError("not an igcli gradient graph: expected inputs input, target_weights and outputs "
                             "scores, input_grads; export it with `igcli export`")
        self.dtype = ORT_TYPES.get(inputs[INPUT].type, torch.float32)
        self.num_classes = int(inputs[WEIGHTS].shape[1])

    def scores(self, x: Tensor) -> Tensor:
        weights = torch.zeros(len(x), self.num_classes, dtype=self.dtype, device=x.device)
        return self.scores_and_grads(x, weights)[0]

    def scores_and_grads(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        if self.fixed_batch is None:
            return self._run(x, weights)
        # A graph exported for one batch size: run full slices, zero-padding the last one.
        parts = [self._run(*_padded(x[i:i + self.fixed_batch], weights[i:i + self.fixed_batch], self.fixed_batch))
                 for i in range(0, len(x), self.fixed_batch)]
        scores = torch.cat([s for s, _ in parts])[: len(x)]
        grads = torch.cat([g for _, g in parts])[: len(x)]
        return scores, grads

    def _run(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach().to(self.dtype).contiguous()
        weights = weights.detach().to(self.dtype).contiguous()
        if self.device.type == "cuda":
            return self._run_bound(x, weights)
        scores, grads = self.session.run([SCORES, GRADS], {INPUT: x.cpu().numpy(), WEIGHTS: weights.cpu().numpy()})
        return torch.from_numpy(scores), torch.from_numpy(grads)

    def _run_bound(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        x, weights = x.to(self.device), weights.to(self.device)
        scores = torch.empty(len(x), self.num_classes, dtype=self.dtype, device=self.device)
        grads = torch.empty_like(x)
        binding = self.session.io_binding()
        element = NUMPY_TYPES[self.dtype]
        index = self.device.index or 0
        for name, tensor in ((INPUT, x), (WEIGHTS, weights)):
            binding.bind_input(name, "cuda", index, element, list(tensor.shape), tensor.data_ptr())
        for name, tensor in ((SCORES, scores), (GRADS, grads)):
            binding.bind_output(name, "cuda", index, element, list(tensor.shape), tensor.data_ptr())
        torch.cuda.synchronize(self.device)  # inputs written by torch's stream before ORT reads them
        self.session.run_with_iobinding(binding)
        return scores, grads


def _providers(device: torch.device, ort) -> list:
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelError("onnxruntime here has no CUDA provider: pip install onnxruntime-gpu, or use --device cpu")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def _padded(x: Tensor, weights: Tensor, size: int) -> tuple[Tensor, Tensor]:
    missing = size - len(x)
    if missing == 0:
        return x, weights
    return (torch.cat([x, x.new_zeros((missing,) + x.shape[1:])]),
            torch.cat([weights, weights.new_zeros((missing,) + weights.shape[1:])]))
