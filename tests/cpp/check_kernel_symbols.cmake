# ctest guard against ODR mixing between SIMD levels (run with cmake -P).
#
# The per-level kernel objects must define exactly one external symbol family,
# tzfast::cpu::<LEVEL>::*, and no weak/COMDAT symbol at all: an inline function with external
# linkage compiled under -mavx2 could otherwise be picked by the linker for baseline code.
#   -DNM=<nm> -DLEVEL=<level> -DOBJECTS=<obj1|obj2|...>
if(NOT NM OR NOT LEVEL OR NOT OBJECTS)
  message(FATAL_ERROR "usage: cmake -DNM=nm -DLEVEL=avx2 -DOBJECTS='a.o|b.o' -P ${CMAKE_CURRENT_LIST_FILE}")
endif()
string(REPLACE "|" ";" _objects "${OBJECTS}")
set(_bad "")
set(_good 0)
foreach(_obj IN LISTS _objects)
  execute_process(COMMAND "${NM}" -C -g --defined-only "${_obj}"
                  OUTPUT_VARIABLE _out RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "${NM} failed on ${_obj}")
  endif()
  string(REPLACE "\n" ";" _lines "${_out}")
  foreach(_line IN LISTS _lines)
    if(_line STREQUAL "")
      continue()
    endif()
    # "<address> <type> <name>"
    if(_line MATCHES "^[0-9a-fA-F]* ([A-Za-z]) (.*)$")
      set(_type "${CMAKE_MATCH_1}")
      set(_name "${CMAKE_MATCH_2}")
      if(_type MATCHES "^[WVu]$" OR NOT _name MATCHES "^tzfast::cpu::${LEVEL}::")
        list(APPEND _bad "${_line}")
      else()
        math(EXPR _good "${_good} + 1")
      endif()
    endif()
  endforeach()
endforeach()
if(_bad)
  string(REPLACE ";" "\n  " _bad_text "${_bad}")
  message(FATAL_ERROR "kernel objects of level ${LEVEL} export symbols outside "
                      "tzfast::cpu::${LEVEL} (or weak ones):\n  ${_bad_text}")
endif()
if(_good EQUAL 0)
  message(FATAL_ERROR "no tzfast::cpu::${LEVEL} symbol found in ${OBJECTS}")
endif()
message(STATUS "${LEVEL}: ${_good} external symbol(s), all in tzfast::cpu::${LEVEL}, none weak")
