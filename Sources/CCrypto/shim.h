#ifndef RELAY_CCRYPTO_SHIM_H
#define RELAY_CCRYPTO_SHIM_H
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>

/* Macros Swift does not import. OSSL_PARAM_BLD keeps the key pointers it is given until
   OSSL_PARAM_BLD_to_param: they must be static strings. */
static const char *const relay_param_rsa_n = OSSL_PKEY_PARAM_RSA_N;
static const char *const relay_param_rsa_e = OSSL_PKEY_PARAM_RSA_E;
static const char *const relay_param_group = OSSL_PKEY_PARAM_GROUP_NAME;
static const char *const relay_param_public_key = OSSL_PKEY_PARAM_PUB_KEY;
static const int relay_evp_pkey_public_key = EVP_PKEY_PUBLIC_KEY;
static inline long relay_bio_get_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }
#endif
