# Helpers shared by every module's CMakeLists.txt.

# rpa_add_module(<name> SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
# Defines the static library rpa_<name> with alias rpa::<name>, public headers
# under <name>/include, C++20, warnings.
function(rpa_add_module name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(rpa_${name} ${ARG_SOURCES})
  add_library(rpa::${name} ALIAS rpa_${name})
  set_target_properties(rpa_${name} PROPERTIES EXPORT_NAME ${name} POSITION_INDEPENDENT_CODE ON)
  target_compile_features(rpa_${name} PUBLIC cxx_std_20)
  target_include_directories(rpa_${name}
    PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
           $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(rpa_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  rpa_set_warnings(rpa_${name})
  install(DIRECTORY include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endfunction()

# Warnings, applied PRIVATE to one target.
function(rpa_set_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
    -Wunused -Woverloaded-virtual -Wpedantic -Wconversion -Wsign-conversion
    -Wnull-dereference -Wdouble-promotion -Wformat=2 -Wimplicit-fallthrough)
  if(RPA_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# Sanitizers apply to every target of the build (tests must match the library).
macro(rpa_configure_sanitizers)
  if(RPA_LIBFUZZER)
    if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
      message(FATAL_ERROR "RPA_LIBFUZZER needs clang (got ${CMAKE_CXX_COMPILER_ID}): use the 'fuzz' preset")
    endif()
    # Coverage instrumentation for every target, so libFuzzer sees the library's branches.
    add_compile_options(-fsanitize=fuzzer-no-link)
  endif()
  if(RPA_SANITIZE)
    if(RPA_SANITIZE STREQUAL "thread" OR RPA_SANITIZE STREQUAL "address,undefined"
       OR RPA_SANITIZE STREQUAL "address" OR RPA_SANITIZE STREQUAL "undefined")
      add_compile_options(-fsanitize=${RPA_SANITIZE} -fno-omit-frame-pointer)
      # Reports need file:line, i.e. line tables (-g1). Full -g costs ~1.5x the
      # compile time of -g1 here, so the sanitizer presets build -O1 -g1
      # (CMAKE_CXX_FLAGS_RELWITHDEBINFO in CMakePresets.json); a build type
      # without any -g gets -g1, one with -g (Debug) keeps it for gdb.
      if(NOT CMAKE_BUILD_TYPE MATCHES "^(Debug|RelWithDebInfo)$")
        add_compile_options(-g1)
      endif()
      add_link_options(-fsanitize=${RPA_SANITIZE})
      if(RPA_SANITIZE MATCHES "undefined")
        add_compile_options(-fno-sanitize-recover=undefined)
      endif()
      add_compile_definitions(RPA_SANITIZE_BUILD_DEFINE=1)
    else()
      message(FATAL_ERROR "RPA_SANITIZE must be \"address,undefined\" or \"thread\", got \"${RPA_SANITIZE}\"")
    endif()
  endif()
endmacro()

# rpa_add_gtest(<target> LABEL <label> SOURCES ... LIBS ...)
function(rpa_add_gtest target)
  cmake_parse_arguments(ARG "" "LABEL;TIMEOUT" "SOURCES;LIBS" ${ARGN})
  add_executable(${target} ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  rpa_set_warnings(${target})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  gtest_discover_tests(${target}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS ${ARG_LABEL} TIMEOUT ${ARG_TIMEOUT}
               ENVIRONMENT "RPA_SHARED_DIR=${PROJECT_SOURCE_DIR}/../shared")
endfunction()

# Install the exported targets and a config so that find_package(rpa) works.
function(rpa_install_package)
  cmake_parse_arguments(ARG "" "" "TARGETS" ${ARGN})
  include(CMakePackageConfigHelpers)
  install(TARGETS ${ARG_TARGETS} EXPORT rpaTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT rpaTargets NAMESPACE rpa:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/rpa)
  configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/rpaConfig.cmake.in
    ${PROJECT_BINARY_DIR}/rpaConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/rpa)
  write_basic_package_version_file(${PROJECT_BINARY_DIR}/rpaConfigVersion.cmake
    COMPATIBILITY SameMinorVersion)
  install(FILES ${PROJECT_BINARY_DIR}/rpaConfig.cmake ${PROJECT_BINARY_DIR}/rpaConfigVersion.cmake
    DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/rpa)
endfunction()
