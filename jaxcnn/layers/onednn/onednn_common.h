// What both oneDNN extension sources share: one CPU engine for the process, one stream
// per calling thread, and the guard that turns exceptions into XLA errors.
#ifndef JAXCNN_ONEDNN_COMMON_H_
#define JAXCNN_ONEDNN_COMMON_H_

#include <exception>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace jaxcnn_onednn {

// Defined in conv_ffi.cc.
dnnl::engine& Engine();
dnnl::stream& Stream();  // one in-order stream per thread: XLA may run custom calls concurrently

// Runs `body` and turns exceptions into XLA errors (an exception must not cross the C ABI);
// `what` names the custom call in the message.
template <typename F>
xla::ffi::Error Guarded(const char* what, F body) {
  try {
    body();
    return xla::ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return xla::ffi::Error(xla::ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return xla::ffi::Error(xla::ffi::ErrorCode::kInternal, std::string(what) + ": " + e.what());
  }
}

}  // namespace jaxcnn_onednn

#endif  // JAXCNN_ONEDNN_COMMON_H_
