"""One loop of the DP kernel written as LLVM vector code: a group of eight rows pushed
onto a row of targets with back-pointer hints, sixteen targets at a time.

With hints, each target t of a pass over a group of rows s..s+7 (see
:func:`ddpm_tools.core.kernels._push_columns`) does

    m = min over the eight rows of C[k-1, s + r] + L[s + r, t]
    bp[k, t] = s if m < C[k, t] else bp[k, t]
    C[k, t] = min(m, C[k, t])

LLVM's loop vectorizer takes four float64 targets at a time, so every four hints it
narrows a four-lane float64 mask to int16 lanes on its own (an extract and two packs),
which made the hints cost about a third of the forward pass. Here each step takes
sixteen targets: four four-lane parts of float64 arithmetic, whose masks are joined into
one sixteen-lane mask and narrowed to int16 in one go, then one blend and one store of
sixteen hints. The arithmetic is the same: the same float64 additions, and ``min(x, y)``
is ``x if x < y else y`` (IEEE ``<``, as in the kernels), so C and bp get the same bits.
C[k, t] enters the tree of minima before its last step (``min(min(a, C), b)``, with the
hint's mask ``result < C``): the same value, and a store LLVM does not turn into a
masked store (slow on some CPUs). The code is generic LLVM IR (no x86 intrinsics): each
target CPU gets its own instructions.
"""

from __future__ import annotations  # noqa: I001  (numba_setup comes before numba)

from typing import Any

from ddpm_tools.core import numba_setup  # noqa: F401  (numba's disk cache and threads)
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LANES = 16  # targets per step of hint_pass
PART = 4  # float64 lanes per part (one AVX2 register)
ROWS = 8  # rows per group (kernels.DP_GROUP is this)


def _hint_pass(
    typingctx: Any, L: Any, C: Any, bp: Any, s: Any, k: Any, ta: Any, steps: Any
) -> Any:
    """``hint_pass(L, C, bp, s, k, ta, steps)`` in compiled code: push rows s..s+7 onto
    the targets [ta, ta + 16 * steps) for budget k, with hints. L, C: 2-D float64 arrays
    (C-contiguous rows), bp: 2-D int16 or int32; every index must be in bounds (not
    checked). Rows s..s+7 must be final (C[k-1, s..s+7] is read once, first)."""
    sig = types.void(L, C, bp, s, k, ta, steps)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        tl, tc, th = signature.args[:3]
        la, ca, ba = (context.make_array(t)(context, builder, a)
                      for t, a in zip((tl, tc, th), args[:3], strict=True))
        s_, k_, ta_, n_ = (context.cast(builder, v, t, types.intp)
                           for v, t in zip(args[3:], signature.args[3:], strict=True))
        intp = context.get_value_type(types.intp)
        hty = context.get_data_type(th.dtype)
        part = ir.VectorType(ir.DoubleType(), PART)
        hints = ir.VectorType(hty, LANES)

        def const(i: int) -> ir.Constant:
            return ir.Constant(intp, i)

        def splat(x: Any, vty: ir.VectorType) -> Any:
            v = ir.Constant(vty, ir.Undefined)
            for q in range(vty.count):
                v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), q))
            return v

        def at(ty: Any, arr: Any, i: Any, j: Any, vty: ir.VectorType) -> Any:
            ptr = cgutils.get_item_pointer(context, builder, ty, arr, [i, j])
            return builder.bitcast(ptr, vty.as_pointer())

        def vmin(x: Any, y: Any) -> Any:
            return builder.select(builder.fcmp_ordered("<", x, y), x, y)

        def join(x: Any, y: Any) -> Any:
            n = x.type.count * 2
            idx = ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n)))
            return builder.shuffle_vector(x, y, idx)

        k1 = builder.sub(k_, const(1))
        c = [splat(builder.load(cgutils.get_item_pointer(
            context, builder, tc, ca, [k1, builder.add(s_, const(r))])), part)
            for r in range(ROWS)]
        v = splat(builder.trunc(s_, hty) if hty.width < intp.width else s_, hints)
        h_align = hty.width // 8
        with cgutils.for_range(builder, n_) as loop:
            j0 = builder.add(ta_, builder.mul(loop.index, const(LANES)))
            masks = []
            for p in range(LANES // PART):
                j = builder.add(j0, const(p * PART))
                sums = [builder.fadd(c[r], builder.load(
                    at(tl, la, builder.add(s_, const(r)), j, part), align=8))
                    for r in range(ROWS)]
                a = vmin(vmin(sums[0], sums[1]), vmin(sums[2], sums[3]))
                b = vmin(vmin(sums[4], sums[5]), vmin(sums[6], sums[7]))
                ptr = at(tc, ca, k_, j, part)
                cur = builder.load(ptr, align=8)
                new = vmin(vmin(a, cur), b)
                masks.append(builder.fcmp_ordered("<", new, cur))
                builder.store(new, ptr, align=8)
            better = join(join(masks[0], masks[1]), join(masks[2], masks[3]))
            ptr = at(th, ba, k_, j0, hints)
            builder.store(builder.select(better, v, builder.load(ptr, align=h_align)), ptr,
                          align=h_align)
        return context.get_dummy_value()

    return sig, codegen


hint_pass: Any = intrinsic(_hint_pass)
