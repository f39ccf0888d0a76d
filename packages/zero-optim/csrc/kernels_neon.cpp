// The optimizer kernels built for the neon instruction set (flags set in CMakeLists.txt).
#define ZO_ISA_NS isa_neon
#include "kernels_impl.hpp"

ZO_DEFINE_KERNEL_TABLE(kernels_neon, "neon")
