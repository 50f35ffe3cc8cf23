#include "rpa/runtime/status.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace rpa {
namespace {

TEST(StatusTest, DefaultIsOk) {
  Status status;
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kOk);
  EXPECT_EQ(status.ToString(), "OK");
}

TEST(StatusTest, ErrorCarriesCodeAndMessage) {
  Status status =
      InvalidArgumentError("page_size_tokens must be positive, got 0");
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.ToString(),
            "INVALID_ARGUMENT: page_size_tokens must be positive, got 0");
  EXPECT_EQ(ResourceExhaustedError("x").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(NotFoundError("x").code(), StatusCode::kNotFound);
  EXPECT_EQ(FailedPreconditionError("x").code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(UnavailableError("x").code(), StatusCode::kUnavailable);
  EXPECT_EQ(InternalError("x").code(), StatusCode::kInternal);
}

TEST(StatusTest, OkStatusDropsMessage) {
  Status status(StatusCode::kOk, "ignored");
  EXPECT_EQ(status, OkStatus());
}

TEST(StatusTest, CopiesAreIndependentAndMovedFromIsOk) {
  Status error = NotFoundError("sequence 7");
  Status copy = error;
  EXPECT_EQ(copy, error);
  Status assigned;
  assigned = error;
  EXPECT_EQ(assigned.ToString(), "NOT_FOUND: sequence 7");
  const Status& same = assigned;
  assigned = same;  // self-assignment keeps the error
  EXPECT_EQ(assigned.message(), "sequence 7");

  Status moved = std::move(error);
  EXPECT_EQ(moved.message(), "sequence 7");
  EXPECT_TRUE(error.ok());  // NOLINT(bugprone-use-after-move): documented
  EXPECT_TRUE(error.message().empty());
  copy = OkStatus();
  EXPECT_TRUE(copy.ok());
  EXPECT_EQ(moved.code(), StatusCode::kNotFound);  // copy had its own error
}

StatusOr<int> Half(int x) {
  if (x % 2 != 0)
    return InvalidArgumentError("x must be even, got " + std::to_string(x));
  return x / 2;
}

Status UseHalf(int x, int* out) {
  RPA_ASSIGN_OR_RETURN(int half, Half(x));
  *out = half;
  return OkStatus();
}

TEST(StatusOrTest, ValueAndErrorPropagate) {
  int out = -1;
  EXPECT_TRUE(UseHalf(8, &out).ok());
  EXPECT_EQ(out, 4);
  Status status = UseHalf(7, &out);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "x must be even, got 7");
  EXPECT_EQ(out, 4);
}

TEST(StatusOrTest, HoldsMoveOnlyValues) {
  StatusOr<std::unique_ptr<int>> value(std::make_unique<int>(3));
  ASSERT_TRUE(value.ok());
  std::unique_ptr<int> taken = std::move(value).value();
  EXPECT_EQ(*taken, 3);
}

Status FailIfNegative(int x) {
  RPA_RETURN_IF_ERROR(x < 0 ? InvalidArgumentError("negative") : OkStatus());
  return NotFoundError("reached the end");
}

TEST(StatusTest, ReturnIfErrorReturnsEarly) {
  EXPECT_EQ(FailIfNegative(-1).message(), "negative");
  EXPECT_EQ(FailIfNegative(1).code(), StatusCode::kNotFound);
}

TEST(StatusDeathTest, ValueOfErrorAborts) {
  StatusOr<int> error(InternalError("boom"));
  EXPECT_DEATH((void)error.value(), "boom");
}

TEST(CheckDeathTest, CheckPrintsCondition) {
  EXPECT_DEATH(RPA_CHECK(1 + 1 == 3), "1 \\+ 1 == 3");
}

}  // namespace
}  // namespace rpa
