#ifndef RELAY_CJWT_SHIM_H
#define RELAY_CJWT_SHIM_H
#include <stdlib.h>
#include <jwt.h>
#endif
