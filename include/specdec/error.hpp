#pragma once
/// \file error.hpp
/// specdec's exception hierarchy. Every error derives from `specdec::error`, and every
/// message names the file or parameter, the value seen and the value expected.
#include <stdexcept>
#include <string>

#include "specdec/fwd.hpp"

namespace specdec {

/// Base of every exception specdec throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A parameter (threshold, gamma, temperature, ...) outside its valid range.
class invalid_argument : public error {
 public:
  using error::error;
};

/// A checkpoint file that is missing, truncated, corrupt or inconsistent with its header.
class checkpoint_error : public error {
 public:
  using error::error;
};

/// A tokenizer file that is missing, truncated or inconsistent with its model.
class tokenizer_error : public error {
 public:
  using error::error;
};

/// Draft and target (or model and tokenizer) disagree on the vocabulary size.
class vocabulary_mismatch : public error {
 public:
  using error::error;
};

/// More tokens than a model's context holds.
class context_overflow : public error {
 public:
  using error::error;
};

/// The system refused a resource a component needs to start: a thread that could not be
/// created, or memory over the configured limit. The message says how much was asked,
/// how much was available and which option bounds it.
class resource_error : public error {
 public:
  using error::error;
};

/// A worker thread that could not be started (the message says how many did start).
class thread_start_error : public resource_error {
 public:
  using resource_error::resource_error;
};

/// A token id outside [0, vocab_size).
class token_out_of_range : public error {
 public:
  using error::error;
};

}  // namespace specdec
