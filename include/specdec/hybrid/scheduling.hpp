#pragma once
/// \file hybrid/scheduling.hpp
/// Feeding the hybrid layer's length predictions to the batch scheduler: the scheduler
/// (scheduler.hpp) sits below hybrid/ and takes plain predicted lengths; this adapter
/// turns request features and a `hybrid::length_predictor` into them.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/predictor.hpp"
#include "specdec/scheduler.hpp"

namespace specdec {

/// Predicts each request's length with a hybrid length predictor from its features.
///
/// ```cpp
/// specdec::hybrid::constant_length_predictor p{.length = 32};
/// auto reqs = specdec::with_predicted_lengths(requests, features, p);
/// ```
template <hybrid::length_predictor P>
[[nodiscard]] std::vector<scheduled_request> with_predicted_lengths(std::vector<batch_request> requests,
                                                                    const std::vector<hybrid::request_features>& features,
                                                                    const P& predictor) {
  if (requests.size() != features.size())
    throw invalid_argument("with_predicted_lengths: " + std::to_string(requests.size()) + " requests but " +
                           std::to_string(features.size()) + " feature rows; expected equal counts");
  predictor.validate();
  std::vector<scheduled_request> out;
  out.reserve(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i)
    out.push_back({std::move(requests[i]), std::max(0.0, static_cast<double>(predictor.predict(features[i])))});
  return out;
}

}  // namespace specdec
