// What the plugin needs from libtorch that tch does not expose.
#include <torch/script.h>

#include <cstdlib>
#include <cstring>
#include <string>

extern "C" {

// The names of `forward`'s arguments (self excluded), one per line, in a malloc'ed string
// the caller frees; NULL with *error set (malloc'ed too) when the module cannot be read.
char* nexus_forward_arguments(const char* path, char** error) {
  try {
    auto module = torch::jit::load(path);
    const auto& schema = module.get_method("forward").function().getSchema();
    std::string names;
    const auto& arguments = schema.arguments();
    for (size_t i = 1; i < arguments.size(); ++i) {
      if (i > 1) names += '\n';
      names += arguments[i].name();
    }
    return strdup(names.c_str());
  } catch (const std::exception& e) {
    *error = strdup(e.what());
    return nullptr;
  }
}

// Inference mode (no autograd bookkeeping at all) for the calling thread until the guard
// is dropped.
void* nexus_inference_mode_enter() { return new c10::InferenceMode(); }
void nexus_inference_mode_exit(void* guard) { delete static_cast<c10::InferenceMode*>(guard); }

}
