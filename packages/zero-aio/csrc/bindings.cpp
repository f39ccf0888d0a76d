// Python bindings. Buffers arrive as integer addresses plus byte counts: zero_aio._native has
// already checked them (CPU, contiguous, writable for reads, alive until the op completes),
// so this module never links torch. The GIL is released for all I/O and every wait.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

#include "build_info.hpp"
#include "checksum.hpp"
#include "engine.hpp"
#include "handle.hpp"
#include "host_buffer.hpp"

namespace py = pybind11;
using zero_aio::Backend;
using zero_aio::Config;
using zero_aio::FailedIo;
using zero_aio::Handle;

namespace {

Backend parse_backend(const std::string& name) {
  if (name == "threads") return Backend::kThreads;
  if (name == "libaio") return Backend::kLibaio;
  if (name == "io_uring") return Backend::kIoUring;
  throw std::invalid_argument("unknown backend '" + name +
                              "'; choose one of 'libaio', 'io_uring', 'threads'");
}

// One failure as the message of an OSError (which adds "[Errno N]" and the path itself).
std::string describe(const zero_aio::Failure& f) {
  return f.what + " at offset " + std::to_string(f.offset) + " (" + std::to_string(f.length) +
         " bytes) failed: " + std::strerror(f.err);
}

// [Note: failures become OSError]
// OSError(errno, message, path) is built through the builtin, so Python picks the subclass
// (FileNotFoundError, PermissionError, ...). `offset` is the first failure's file offset and
// `failures` lists every one as (errno, path, offset, length, message).
void raise_failures(const FailedIo& e) {
  const auto& all = e.failures();
  const auto& first = all.front();
  std::string message = describe(first);
  if (all.size() > 1) {
    message += " (and " + std::to_string(all.size() - 1) + " more failures; see .failures)";
  }
  py::list failures;
  for (const auto& f : all) failures.append(py::make_tuple(f.err, f.path, f.offset, f.length, describe(f)));
  py::object error = py::module_::import("builtins").attr("OSError")(first.err, message, first.path);
  error.attr("offset") = first.offset;
  error.attr("failures") = failures;
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
}

// (built, usable, reason) for one backend: usable means the kernel accepted a queue now.
py::tuple probe(Backend b, bool built, const char* reason) {
  if (!built) return py::make_tuple(false, false, reason);
  Config c;
  c.backend = b;
  c.queue_depth = 1;
  try {
    Handle h(c);
  } catch (const std::system_error& e) {
    return py::make_tuple(true, false, std::string("built, but the kernel refused it: ") + e.what());
  }
  return py::make_tuple(true, true, reason);
}

py::dict backends() {
  py::dict out;
  out["libaio"] = probe(Backend::kLibaio, ZA_HAVE_LIBAIO != 0, zero_aio::build_info::kLibaioReason);
  out["io_uring"] =
      probe(Backend::kIoUring, ZA_HAVE_IO_URING != 0, zero_aio::build_info::kIoUringReason);
  out["threads"] = probe(Backend::kThreads, true, "portable pread/pwrite thread pool");
  out["gds"] = py::make_tuple(false, false, zero_aio::build_info::kGdsReason);
  return out;
}

std::uintptr_t buffer_address(const py::buffer& b, bool writable) {
  const py::buffer_info info = b.request(writable);
  return reinterpret_cast<std::uintptr_t>(info.ptr);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "zero-aio's compiled I/O engines (no torch inside; see zero_aio._native)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FailedIo& e) {
      raise_failures(e);
    } catch (const std::system_error& e) {
      py::object error = py::module_::import("builtins").attr("OSError")(e.code().value(), e.what());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
    }
  });
  m.def("backends", &backends);
  m.def("buffer_address", &buffer_address, py::arg("buffer"), py::arg("writable"));
  m.attr("DIRECT_ALIGN") = zero_aio::kDirectAlign;
  m.def(
      "crc32c",
      [](std::uintptr_t addr, std::size_t nbytes, int threads) {
        py::gil_scoped_release release;
        return zero_aio::crc32c_parallel(reinterpret_cast<const void*>(addr), nbytes, threads);
      },
      py::arg("addr"), py::arg("nbytes"), py::arg("threads"));
  m.def("crc32c_combine", &zero_aio::crc32c_combine, py::arg("crc_a"), py::arg("crc_b"),
        py::arg("len_b"));
  m.def("crc32c_implementation", &zero_aio::crc32c_implementation);

  py::class_<Handle>(m, "Handle")
      .def(py::init([](std::size_t block_size, int queue_depth, bool single_submit,
                       bool overlap_events, int intra_op_parallelism, const std::string& backend) {
             Config c;
             c.block_size = block_size;
             c.queue_depth = queue_depth;
             c.single_submit = single_submit;
             c.overlap_events = overlap_events;
             c.intra_op_parallelism = intra_op_parallelism;
             c.backend = parse_backend(backend);
             return new Handle(c);
           }),
           py::arg("block_size"), py::arg("queue_depth"), py::arg("single_submit"),
           py::arg("overlap_events"), py::arg("intra_op_parallelism"), py::arg("backend"))
      .def(
          "run",
          [](Handle& h, const std::string& path, std::uintptr_t addr, std::size_t nbytes,
             std::int64_t offset, bool is_read) {
            py::gil_scoped_release release;
            Handle::finish(h.start(path, addr, nbytes, offset, is_read));
          },
          py::arg("path"), py::arg("addr"), py::arg("nbytes"), py::arg("offset"),
          py::arg("is_read"))
      .def(
          "submit",
          [](Handle& h, const std::string& path, std::uintptr_t addr, std::size_t nbytes,
             std::int64_t offset, bool is_read) {
            py::gil_scoped_release release;
            h.submit(path, addr, nbytes, offset, is_read);
          },
          py::arg("path"), py::arg("addr"), py::arg("nbytes"), py::arg("offset"),
          py::arg("is_read"))
      .def("wait", &Handle::wait, py::call_guard<py::gil_scoped_release>())
      .def("drain", &Handle::drain, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("backend",
                             [](const Handle& h) { return zero_aio::backend_name(h.config().backend); });

  py::class_<zero_aio::HostBuffer>(m, "HostBuffer", py::buffer_protocol())
      .def(py::init<std::size_t, bool>(), py::arg("nbytes"), py::arg("lock"))
      .def_property_readonly("locked", &zero_aio::HostBuffer::locked)
      .def_property_readonly("huge_pages_advised", &zero_aio::HostBuffer::huge_pages_advised)
      .def_property_readonly("nbytes", &zero_aio::HostBuffer::size)
      .def_buffer([](zero_aio::HostBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<unsigned char>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {py::ssize_t{1}});
      });
}
