// The optimizer kernels built for the avx2 instruction set (flags set in CMakeLists.txt).
#define ZO_ISA_NS isa_avx2
#include "kernels_impl.hpp"

ZO_DEFINE_KERNEL_TABLE(kernels_avx2, "avx2")
