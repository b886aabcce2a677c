// The entry point SwiftPM links relay-fuzz with (RelayFuzz_main, weak) when it is built without --sanitize=fuzzer: it replays the files
// given as arguments (a corpus) through the fuzz entry point once each, so the corpus also runs
// as a regression check in ordinary builds. With --sanitize=fuzzer, libFuzzer's main wins.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

__attribute__((weak)) int RelayFuzz_main(int argc, char **argv) {
    for (int index = 1; index < argc; index++) {
        FILE *file = fopen(argv[index], "rb");
        if (!file) { perror(argv[index]); return 1; }
        fseek(file, 0, SEEK_END);
        long size = ftell(file);
        fseek(file, 0, SEEK_SET);
        uint8_t *data = malloc(size > 0 ? (size_t)size : 1);
        size_t read = fread(data, 1, (size_t)size, file);
        fclose(file);
        LLVMFuzzerTestOneInput(data, read);
        free(data);
    }
    printf("replayed %d inputs\n", argc - 1);
    return 0;
}
