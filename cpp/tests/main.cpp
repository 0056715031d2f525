#include "harness.hpp"

int main(int argc, char** argv) { return segrank_test::run(argc, argv); }
