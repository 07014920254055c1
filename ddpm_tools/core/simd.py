"""Two loops of the DP kernel written as LLVM vector code: a group of eight rows pushed
onto a row of targets with back-pointer hints, sixteen targets at a time, and a piece
of sixteen rows pushed onto its own sixteen targets.

With hints, each target t of a pass over a group of rows s..s+7 (see
:func:`ddpm_tools.core.kernels._push_columns`) does

    m = min over the eight rows of C[k-1, s + r] + L[s + r, t]
    bp[k, t] = s if m < C[k, t] else bp[k, t]
    C[k, t] = min(m, C[k, t])

LLVM's loop vectorizer takes four float64 targets at a time, so every four hints it
narrows a four-lane float64 mask to int16 lanes on its own (an extract and two packs),
which made the hints cost about a third of the forward pass. :func:`hint_pass` takes
sixteen targets per step: four four-lane parts of float64 arithmetic, whose masks are
joined into one sixteen-lane mask and narrowed to int16 in one go, then one blend and
one store of sixteen hints. The arithmetic is the same: the same float64 additions, and
``min(x, y)`` is ``x if x < y else y`` (IEEE ``<``, as in the kernels), so C and bp get
the same bits. C[k, t] enters the tree of minima before its last step (``min(min(a, C),
b)``, with the hint's mask ``result < C``): the same value, and a store LLVM does not
turn into a masked store (slow on some CPUs).

:func:`triangle` is the piece of a block's own part where sixteen rows b..b+15 reach the
targets b+1..b+15 (each t only from the rows s < t), for a range of budgets. As a loop
over s and then t (:func:`ddpm_tools.core.kernels._push_rows`) it is sixteen inner
loops of 15, 14, ..., 0 targets per budget, each with its own set-up and a mispredicted
exit: about half a percent of the forward pass's additions, but on one core about a
sixth of its time. Here the sixteen targets are four registers, kept there while the
sixteen rows pass over them in ascending order; where t <= s the sum is replaced by
+inf (a constant mask: the lanes are known when the code is made), which changes
nothing, and parts with no t > s are skipped; C[k-1, b..b+15], the values the rows
add, are the budget before's result, kept in registers too. Each (k, t) sees the same rows in the
same order as in the loop (C[k-1, s] + L[s, t], then ``x < C[k, t]``), so C and bp (the
row s itself, as in the loop) get the same bits.

The code is generic LLVM IR (no x86 intrinsics): each target CPU gets its own
instructions.
"""

from __future__ import annotations  # noqa: I001  (numba_setup comes before numba)

from typing import Any

from ddpm_tools.core import numba_setup  # noqa: F401  (numba's disk cache and threads)
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LANES = 16  # targets per step of hint_pass; rows and targets of a triangle
PART = 4  # float64 lanes per part (one AVX2 register)
ROWS = 8  # rows per group (kernels.DP_GROUP is this)


class _Code:
    """The pieces both loops are made of, for one function being compiled."""

    def __init__(self, context: Any, builder: Any, signature: Any, args: Any) -> None:
        self.context, self.builder = context, builder
        self.types = signature.args[:3]
        self.arrays = [context.make_array(t)(context, builder, a)
                       for t, a in zip(self.types, args[:3], strict=True)]
        self.ints = [context.cast(builder, v, t, types.intp)
                     for v, t in zip(args[3:], signature.args[3:], strict=True)]
        self.intp = context.get_value_type(types.intp)
        self.hty = context.get_data_type(self.types[2].dtype)
        self.part = ir.VectorType(ir.DoubleType(), PART)
        self.hints = ir.VectorType(self.hty, LANES)
        self.h_align = self.hty.width // 8

    def const(self, i: int) -> ir.Constant:
        return ir.Constant(self.intp, i)

    def splat(self, x: Any, vty: ir.VectorType) -> Any:
        v = ir.Constant(vty, ir.Undefined)
        for q in range(vty.count):
            v = self.builder.insert_element(v, x, ir.Constant(ir.IntType(32), q))
        return v

    def row(self, s: Any) -> Any:
        """s as a hint (int16 or int32), in all sixteen lanes."""
        narrow = self.hty.width < self.intp.width
        return self.splat(self.builder.trunc(s, self.hty) if narrow else s, self.hints)

    def ptr(self, which: int, i: Any, j: Any, vty: ir.VectorType | None = None) -> Any:
        """Pointer to element [i, j] of L (0), C (1) or bp (2), as a vector pointer."""
        p = cgutils.get_item_pointer(self.context, self.builder, self.types[which],
                                     self.arrays[which], [i, j])
        return p if vty is None else self.builder.bitcast(p, vty.as_pointer())

    def vmin(self, x: Any, y: Any) -> Any:
        return self.builder.select(self.builder.fcmp_ordered("<", x, y), x, y)

    def join(self, x: Any, y: Any) -> Any:
        n = x.type.count * 2
        idx = ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n)))
        return self.builder.shuffle_vector(x, y, idx)

    def join4(self, masks: list[Any]) -> Any:
        return self.join(self.join(masks[0], masks[1]), self.join(masks[2], masks[3]))


def _hint_pass(
    typingctx: Any, L: Any, C: Any, bp: Any, s: Any, k: Any, ta: Any, steps: Any
) -> Any:
    """``hint_pass(L, C, bp, s, k, ta, steps)`` in compiled code: push rows s..s+7 onto
    the targets [ta, ta + 16 * steps) for budget k, with hints. L, C: 2-D float64 arrays
    (C-contiguous rows), bp: 2-D int16 or int32; every index must be in bounds (not
    checked). Rows s..s+7 must be final (C[k-1, s..s+7] is read once, first)."""
    sig = types.void(L, C, bp, s, k, ta, steps)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        g = _Code(context, builder, signature, args)
        s_, k_, ta_, n_ = g.ints
        k1 = builder.sub(k_, g.const(1))
        c = [g.splat(builder.load(g.ptr(1, k1, builder.add(s_, g.const(r)))), g.part)
             for r in range(ROWS)]
        v = g.row(s_)
        with cgutils.for_range(builder, n_) as loop:
            j0 = builder.add(ta_, builder.mul(loop.index, g.const(LANES)))
            masks = []
            for p in range(LANES // PART):
                j = builder.add(j0, g.const(p * PART))
                sums = [builder.fadd(c[r], builder.load(
                    g.ptr(0, builder.add(s_, g.const(r)), j, g.part), align=8))
                    for r in range(ROWS)]
                a = g.vmin(g.vmin(sums[0], sums[1]), g.vmin(sums[2], sums[3]))
                b = g.vmin(g.vmin(sums[4], sums[5]), g.vmin(sums[6], sums[7]))
                ptr = g.ptr(1, k_, j, g.part)
                cur = builder.load(ptr, align=8)
                new = g.vmin(g.vmin(a, cur), b)
                masks.append(builder.fcmp_ordered("<", new, cur))
                builder.store(new, ptr, align=8)
            ptr = g.ptr(2, k_, j0, g.hints)
            old = builder.load(ptr, align=g.h_align)
            builder.store(builder.select(g.join4(masks), v, old), ptr, align=g.h_align)
        return context.get_dummy_value()

    return sig, codegen


def _make_triangle(keep: bool) -> Any:
    """The triangle loop with hints (``keep``) or without."""

    def triangle(typingctx: Any, L: Any, C: Any, bp: Any, b: Any, k0: Any, k1: Any) -> Any:
        """``triangle(L, C, bp, b, k0, k1)`` in compiled code: push rows b..b+15 onto the
        targets t in b+1..b+15 (each from the rows s < t) for the budgets k in [k0, k1),
        with hints in bp (or, without, bp is not touched). Arrays as for
        :func:`hint_pass`; every index must be in bounds (not checked). C[k0-1, b..b+15]
        must be final; for the later budgets it is what the budget before left."""
        sig = types.void(L, C, bp, b, k0, k1)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            g = _Code(context, builder, signature, args)
            b_, k0_, k1_ = g.ints
            inf = ir.Constant(g.part, [float("inf")] * PART)
            parts = range(LANES // PART)
            # C[k-1, b..b+15], kept from the budget before (read from C the first time)
            prev = [cgutils.alloca_once(builder, g.part) for _ in parts]
            for p in parts:
                builder.store(builder.load(g.ptr(1, builder.sub(k0_, g.const(1)), builder.add(
                    b_, g.const(p * PART)), g.part), align=8), prev[p])
            with cgutils.for_range(builder, builder.sub(k1_, k0_)) as loop:
                k_ = builder.add(k0_, loop.index)
                ptrs = [g.ptr(1, k_, builder.add(b_, g.const(p * PART)), g.part)
                        for p in parts]
                acc = [builder.load(q, align=8) for q in ptrs]
                last = [builder.load(q) for q in prev]
                hptr = g.ptr(2, k_, b_, g.hints) if keep else None
                h = builder.load(hptr, align=g.h_align) if keep else None
                for r in range(LANES - 1):  # row b+15 reaches no target of the piece
                    s_ = builder.add(b_, g.const(r))
                    c = g.splat(builder.extract_element(
                        last[r // PART], ir.Constant(ir.IntType(32), r % PART)), g.part)
                    masks = []
                    for p in parts:
                        lanes = [int(p * PART + q > r) for q in range(PART)]
                        mask = ir.Constant(ir.VectorType(ir.IntType(1), PART), lanes)
                        if not any(lanes):  # no t > s in this part
                            masks.append(mask)
                            continue
                        x = builder.fadd(c, builder.load(
                            g.ptr(0, s_, builder.add(b_, g.const(p * PART)), g.part), align=8))
                        if not all(lanes):  # t <= s in some lanes: their sum is no step
                            x = builder.select(mask, x, inf)
                        better = builder.fcmp_ordered("<", x, acc[p])
                        acc[p] = builder.select(better, x, acc[p])
                        masks.append(better)
                    if keep:
                        h = builder.select(g.join4(masks), g.row(s_), h)
                for q, a, pv in zip(ptrs, acc, prev, strict=True):
                    builder.store(a, q, align=8)
                    builder.store(a, pv)
                if keep:
                    builder.store(h, hptr, align=g.h_align)
            return context.get_dummy_value()

        return sig, codegen

    triangle.__name__ = triangle.__qualname__ = "triangle_hints" if keep else "triangle"
    return intrinsic(triangle)


hint_pass: Any = intrinsic(_hint_pass)
triangle: Any = _make_triangle(False)
triangle_hints: Any = _make_triangle(True)
