// The perturbation engine's C++ unit tests (test_perturb.cpp), run by main() in
// test_elementwise.cpp so that ctest keeps one test executable.
#pragma once

// Runs every perturbation test, prints one line per test; returns the number of failed checks.
int run_perturb_tests();
