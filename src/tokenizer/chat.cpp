// The ChatML prompt (chat_prompt, include/longrope/tokenizer.h).
#include <string>

#include "longrope/tokenizer.h"

namespace longrope {

ChatPrompt chat_prompt(const std::string& system, const std::string& chat_template) {
  std::string sys = system;
  if (sys.empty()) {
    const std::string open = "<|im_start|>system\\n";
    const size_t a = chat_template.find(open);
    if (a != std::string::npos) {
      const size_t b = chat_template.find("<|im_end|>", a);
      if (b != std::string::npos) sys = chat_template.substr(a + open.size(), b - a - open.size());
    }
  }
  ChatPrompt p;
  if (!sys.empty()) p.open += "<|im_start|>system\n" + sys + "<|im_end|>\n";
  p.open += "<|im_start|>user\n";
  p.close = "<|im_end|>\n<|im_start|>assistant\n";
  return p;
}

}  // namespace longrope
