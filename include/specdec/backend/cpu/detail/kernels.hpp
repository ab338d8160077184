#pragma once
/// \file backend/cpu/detail/kernels.hpp
/// The numeric kernels of the CPU transformer, written for batch invariance: every
/// reduction (dot product, sum of squares, softmax sum) runs in one fixed order that
/// depends only on the vector length, never on how many tokens are in the block, on the
/// position of a row or token inside a tile, or on memory alignment. That is what makes
/// row i of a k-token forward bit-identical to the i-th of k single-token forwards.
///
/// Why not Eigen's GEMM/GEMV for the projections: Eigen picks different kernels (and so
/// different summation orders) for matrix-vector and matrix-matrix products and for
/// different block shapes, which breaks bit-exactness between k = 1 and k > 1. Eigen is
/// used only for elementwise work, where every output element is one correctly rounded
/// operation and vectorisation cannot change the result.
///
/// Two product kernels, both written with GCC/Clang vector extensions (AVX-512 with
/// -march=native, narrower SIMD otherwise; unaligned loads and stores through a 4-byte-
/// aligned, may_alias vector type, see load16):
/// - weight products (`matmul_panels`, every weight format): weights stored in panels of
///   16 rows, one in-order multiply-add chain per output over the columns, each input
///   element broadcast into the 16-row accumulators of a panel;
/// - dot products (`dot`, `matmul_rows`: attention scores, sums of squares): one 16-lane
///   accumulator per (row, vector) pair, a fixed horizontal tree reduction, then a scalar
///   tail added in index order.
/// The weight products' multiply-adds go through `fmadd_lanes`, which rounds like the
/// scalar `fmadd` (fused where the target has an FMA) at every optimisation level. In the
/// dot-product tiles the vector `acc += w * x` is contracted into an FMA (or not) by the
/// same rule in every instantiation (a single-use multiply feeding an add, no vectoriser
/// involved), and scalar tails go through `fmadd`. So exactness across k holds in every
/// build; results may differ between builds with different -march flags.
#include "specdec/backend/cpu/detail/activations.hpp"
#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/attention.hpp"
#include "specdec/backend/cpu/detail/dot.hpp"
#include "specdec/backend/cpu/detail/int8_products.hpp"
#include "specdec/backend/cpu/detail/matmul.hpp"
