// The optimizer kernels built for the avx512 instruction set (flags set in CMakeLists.txt).
#define ZO_ISA_NS isa_avx512
#include "kernels_impl.hpp"

ZO_DEFINE_KERNEL_TABLE(kernels_avx512, "avx512")
