#pragma once
/// \file backend/cpu/detail/kernels.hpp
/// The numeric kernels of the CPU transformer, one header per family (this one includes
/// them all), written for batch invariance: every reduction (dot product, sum of squares,
/// softmax sum) runs in one fixed order that depends only on the vector length, never on
/// how many tokens are in the block, on the position of a row or token inside a tile, or
/// on memory alignment. That is what makes row i of a k-token forward bit-identical to
/// the i-th of k single-token forwards.
///
/// - arch/vector.hpp: the vector layer (`v16`, loads, stores, `fmadd`, the fixed-order
///   sums), with the instruction sets behind it in arch/avx512.hpp, arch/avx2.hpp and
///   arch/scalar.hpp;
/// - tiles.hpp: tile shapes as policy types, and every product's choice of them, one
///   table each;
/// - matmul.hpp: weight products over panel-major weights (`matmul_panels`: fp32, bf16,
///   fp16, q8_0); int8_products.hpp: the w8a8 format's integer products (`matmul_i8`);
/// - dot.hpp: row-major dot-product tiles (`dot`, `matmul_rows`: attention scores);
/// - attention.hpp: RoPE, the scores' softmax, the weighted sums of value rows;
/// - activations.hpp: RMSNorm's scale, `exp_lanes` (e^x), SwiGLU.
///
/// Why not Eigen's GEMM/GEMV for the projections: Eigen picks different kernels (and so
/// different summation orders) for matrix-vector and matrix-matrix products and for
/// different block shapes, which breaks bit-exactness between k = 1 and k > 1. Eigen is
/// used only for elementwise work, where every output element is one correctly rounded
/// operation and vectorisation cannot change the result.
///
/// Two product kernels, both written over the vector layer (unaligned loads and stores
/// through a 4-byte-aligned, may_alias vector type, see load16):
/// - weight products (`matmul_panels`, every weight format): weights stored in panels of
///   16 rows, one in-order multiply-add chain per output over the columns, each input
///   element broadcast into the 16-row accumulators of a panel;
/// - dot products (`dot`, `matmul_rows`: attention scores, sums of squares): one 16-lane
///   accumulator per (row, vector) pair, a fixed horizontal tree reduction, then a scalar
///   tail added in index order.
/// The products' multiply-adds (weight products, dot-product tiles, the attention's value
/// sums) go through `fmadd_lanes`, which rounds like the scalar `fmadd` (fused where the
/// target has an FMA) at every optimisation level, and scalar tails go through `fmadd`.
/// So exactness across k holds in every build. Across builds, results depend on whether
/// the target has an FMA, not on its vector width: an AVX-512 and an AVX2 + FMA
/// (x86-64-v3) build give the same bits; a build without FMA (plain x86-64) rounds every
/// multiply-add twice and gives other, equally batch-invariant, bits.
#include "specdec/backend/cpu/detail/activations.hpp"
#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/attention.hpp"
#include "specdec/backend/cpu/detail/dot.hpp"
#include "specdec/backend/cpu/detail/int8_products.hpp"
#include "specdec/backend/cpu/detail/matmul.hpp"
#include "specdec/backend/cpu/detail/tiles.hpp"
