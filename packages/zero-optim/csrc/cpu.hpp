// Which kernel table runs: detected once at load, overridable for tests and debugging.
#pragma once

#include <string>
#include <vector>

#include "common.hpp"

namespace zero_optim {

// Kernel tables built into this extension, best first.
std::vector<const KernelTable*> compiled_tables();

// Whether this CPU (and OS) can run the named table.
bool cpu_supports(const std::string& isa);

// The table in use. Chosen on first call: $ZERO_OPTIM_ISA if set (and usable), else the best
// compiled table this CPU supports.
const KernelTable* active_table();

// Selects a table by name; throws std::invalid_argument if not built or not supported.
void select_table(const std::string& isa);

}  // namespace zero_optim
