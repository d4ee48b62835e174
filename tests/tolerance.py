"""The tolerance rule of DESIGN.md, shared by every kernel test.

A kernel computing in dtype T passes when its largest error against the float64 reference is at
most twice the largest error of the PyTorch reference run in T, plus ``atol``:
    max|kernel - ref64| <= 2 * max|torch_reference_in_T - ref64| + atol
"""
import torch


def assert_within_rule(actual: torch.Tensor, reference64: torch.Tensor, baseline: torch.Tensor, atol: float, what: str = "") -> None:
    """``actual``: the kernel's output; ``reference64``: the reference in float64; ``baseline``:
    the reference run in the kernel's dtype."""
    assert actual.shape == reference64.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(reference64.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values in the kernel output"
    error = (actual.double() - reference64).abs().max().item() if actual.numel() else 0.0
    allowed = 2 * ((baseline.double() - reference64).abs().max().item() if baseline.numel() else 0.0) + atol
    assert error <= allowed, f"{what}: max error {error:.3e} > allowed {allowed:.3e} (2 x torch's own error + atol {atol:g})"
