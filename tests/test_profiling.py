"""parity.profiling: attributing a step's time to named operations."""

import jax
import jax.numpy as jnp

from parity.bench import profiling

HLO = """HloModule jit_step
ENTRY %main {
  %p = f32[16,2,2,512]{3,2,1,0} parameter(0)
  %convolution.1 = f32[16,2,2,512]{3,2,1,0} convolution(%p, %q), window={size=2x2 rhs_reversal=1x1}, dim_labels=x
  %add_fusion.3 = f32[16,2,2,512]{3,2,1,0} fusion(%convolution.1), kind=kLoop, calls=%fused
  ROOT %ynn_fusion = f32[16,10]{1,0} fusion(%add_fusion.3, %p), kind=kCustom, calls=%lib, backend_config=LIBRARY
}

%lib (a: f32[16,2,2,512], b: f32[3,3,512,512]) -> f32[16,10] {
  %a = f32[16,2,2,512]{3,2,1,0} parameter(0)
  %c1 = f32[16,2,2,512]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %c2 = f32[16,2,2,512]{3,2,1,0} convolution(%c1, %b), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  ROOT %d = f32[16,10]{1,0} dot(%c2, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
""".replace("LIBRARY", '{"fusion_config":{"kind":"__ynn_fusion"},"outer_dimension_partitions":[]}')


def test_hlo_instructions_are_named_with_opcode_shape_and_window():
    ins = profiling.hlo_instructions(HLO)
    assert ins["convolution.1"] == "convolution f32[16,2,2,512]{3,2,1,0} window={size=2x2 rhs_reversal=1x1}"
    assert ins["add_fusion.3"] == "fusion f32[16,2,2,512]{3,2,1,0} kLoop"
    # a library fusion names its library and the convolutions and dots it took
    assert ins["ynn_fusion"] == "fusion f32[16,10]{1,0} kCustom __ynn_fusion (inside: 2 convolution, 1 dot)"
    assert ins["p"].startswith("parameter")


def test_warning_only_for_an_operation_above_half_a_step():
    ops = [profiling.Op("convolution.1", "convolution", 190.0, 0.9), profiling.Op("dot", "dot", 5.0, 0.05)]
    (w,) = profiling.warnings("resnet18 jax", ops)
    assert "90%" in w and "convolution.1" in w
    assert profiling.warnings("x", [profiling.Op("a", "b", 1.0, 0.5)]) == []


def test_jax_ops_names_the_instructions_of_a_real_step():
    x, w = jnp.ones((4, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
    f = jax.jit(lambda x, w: jnp.tanh(jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))))
    f(x, w).block_until_ready()
    ops = profiling.jax_ops(lambda: f(x, w), f.lower(x, w).compile().as_text())
    assert ops and all(op.ms >= 0 and op.share >= 0 for op in ops)
    assert all(op.name in profiling.hlo_instructions(f.lower(x, w).compile().as_text()) for op in ops)
