// The embedded percentile table of the Azure LLM inference trace 2023
// (Microsoft Azure, Azure Public Dataset, CC-BY 4.0; the splitwise_conv.csv /
// splitwise_code.csv files of the Vidur simulator's processed traces,
// commit 7d47513). Grid point g (in tenths of a percent: 0, 1 %, ..., 98 %,
// then 99.0 %, 99.1 %, ..., 100 %, finer in the tail because the code trace's
// output lengths jump from 249 at p99 to 1899 at p100) holds the sorted
// column's element at index (g * (n - 1) + 500) / 1000 (nearest rank, halves
// up). tests/scheduler/workload_test.cc (PercentilesMatchTheCsv) recomputes it
// from the CSVs whenever ../shared/data/azure-llm-2023/ is present.

#include <cstdint>
#include <span>

#include "rpa/scheduler/workload.h"

namespace rpa::scheduler {
namespace {

constexpr std::uint32_t kGridTenths[110] = {
    0,   10,  20,  30,  40,  50,  60,  70,  80,  90,  100, 110, 120, 130,
    140, 150, 160, 170, 180, 190, 200, 210, 220, 230, 240, 250, 260, 270,
    280, 290, 300, 310, 320, 330, 340, 350, 360, 370, 380, 390, 400, 410,
    420, 430, 440, 450, 460, 470, 480, 490, 500, 510, 520, 530, 540, 550,
    560, 570, 580, 590, 600, 610, 620, 630, 640, 650, 660, 670, 680, 690,
    700, 710, 720, 730, 740, 750, 760, 770, 780, 790, 800, 810, 820, 830,
    840, 850, 860, 870, 880, 890, 900, 910, 920, 930, 940, 950, 960, 970,
    980, 990, 991, 992, 993, 994, 995, 996, 997, 998, 999, 1000};
constexpr std::uint32_t kConversationPrompt[110] = {
    2,    29,   91,   161,  181,  181,  191,  197,  201,  203,  207,
    212,  222,  242,  317,  372,  375,  378,  381,  384,  387,  390,
    392,  394,  395,  396,  398,  399,  400,  402,  403,  405,  406,
    408,  411,  414,  419,  424,  433,  456,  703,  863,  903,  946,
    972,  984,  994,  1002, 1009, 1014, 1020, 1025, 1031, 1036, 1041,
    1045, 1050, 1055, 1060, 1065, 1071, 1076, 1081, 1086, 1092, 1097,
    1102, 1109, 1116, 1122, 1130, 1139, 1147, 1159, 1171, 1189, 1214,
    1249, 1311, 1314, 1315, 1321, 1368, 1508, 1690, 1876, 2032, 2221,
    2401, 2584, 2735, 3291, 4073, 4076, 4079, 4083, 4086, 4090, 4098,
    4142, 4151, 4159, 4232, 4623, 4831, 5022, 5277, 5652, 6212, 14050};
constexpr std::uint32_t kConversationOutput[110] = {
    7,   16,  24,  32,  38,  41,  44,  47,  49,  52,  54,  57,  59,  62,
    64,  67,  69,  71,  73,  75,  77,  79,  81,  82,  84,  85,  86,  87,
    89,  90,  91,  92,  93,  94,  95,  96,  97,  99,  100, 101, 103, 105,
    107, 108, 110, 113, 116, 118, 122, 125, 129, 133, 137, 141, 145, 151,
    156, 161, 163, 169, 177, 182, 190, 202, 216, 217, 237, 371, 375, 378,
    384, 387, 390, 393, 394, 395, 396, 396, 397, 398, 400, 402, 404, 407,
    410, 411, 414, 415, 417, 420, 424, 428, 429, 433, 442, 451, 468, 509,
    540, 601, 607, 614, 621, 630, 643, 658, 675, 916, 954, 1000};
constexpr std::uint32_t kCodePrompt[110] = {
    3,    17,   35,   50,   62,   75,   88,   97,   109,  130,  147,
    162,  179,  193,  209,  232,  253,  283,  319,  352,  386,  423,
    469,  501,  539,  578,  604,  651,  698,  745,  770,  816,  848,
    880,  908,  938,  969,  997,  1027, 1049, 1075, 1105, 1133, 1174,
    1205, 1261, 1296, 1346, 1377, 1417, 1469, 1500, 1555, 1600, 1642,
    1690, 1724, 1774, 1823, 1874, 1909, 1964, 2024, 2077, 2128, 2164,
    2226, 2284, 2329, 2386, 2433, 2480, 2546, 2615, 2670, 2745, 2805,
    2896, 2975, 3066, 3192, 3295, 3452, 3599, 3714, 3919, 4107, 4320,
    4559, 4759, 5186, 5631, 5961, 6194, 6585, 7302, 7430, 7435, 7436,
    7436, 7436, 7436, 7436, 7436, 7436, 7436, 7436, 7436, 7437, 7437};
constexpr std::uint32_t kCodeOutput[110] = {
    6,   6,   6,   6,   6,   6,   6,   6,   6,   7,   7,   7,   7,   7,
    7,   7,   8,   8,   8,   8,   8,   8,   9,   9,   9,   9,   9,   9,
    9,   9,   9,   10,  10,  10,  10,  10,  10,  11,  11,  11,  11,  11,
    12,  12,  12,  12,  12,  13,  13,  13,  13,  13,  13,  14,  14,  14,
    14,  15,  15,  15,  16,  16,  16,  17,  17,  18,  18,  19,  19,  19,
    20,  21,  21,  22,  23,  24,  25,  26,  27,  28,  29,  31,  32,  34,
    37,  39,  42,  45,  48,  52,  55,  59,  65,  72,  79,  90,  105, 128,
    172, 252, 263, 277, 295, 310, 361, 403, 519, 666, 824, 1899};

}  // namespace

std::span<const std::uint32_t> AzurePercentileGridTenths() {
  return kGridTenths;
}

std::span<const std::uint32_t> AzurePromptPercentiles(AzureTrace trace) {
  if (trace == AzureTrace::kCode) return kCodePrompt;
  return kConversationPrompt;
}

std::span<const std::uint32_t> AzureOutputPercentiles(AzureTrace trace) {
  if (trace == AzureTrace::kCode) return kCodeOutput;
  return kConversationOutput;
}

double AzureMeanArrivalRatePerS(AzureTrace trace) {
  // requests / (last arrived_at): 19366 / 3501.72 s and 8819 / 3435.95 s.
  return trace == AzureTrace::kCode ? 8819.0 / 3435.948056
                                    : 19366.0 / 3501.721937;
}

}  // namespace rpa::scheduler
