// The optimizer kernels built for the baseline instruction set (flags set in CMakeLists.txt).
#define ZO_ISA_NS isa_baseline
#include "kernels_impl.hpp"

ZO_DEFINE_KERNEL_TABLE(kernels_baseline, "baseline")
