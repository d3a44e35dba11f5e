#include "threadpool.h"
#include <chrono>
#include <cstdio>
#include <atomic>
#include <vector>
using namespace cat::cpu;
static volatile float sink;
void spin_work(int iters){ float a=1; for(int i=0;i<iters;++i) a=a*1.0000001f+0.5f; sink=a; }
int main(int argc, char** argv){
  set_num_threads(2);
  for (int items : {8, 64, 400}) for (int work_ns : {0, 200}) {
    int iters = work_ns; // rough: ~1ns per iter? measured below
    auto run = [&](int reps){
      auto t0 = std::chrono::steady_clock::now();
      for (int r=0;r<reps;++r){ parallel_for(items, [&](int64_t i){ spin_work(iters); }); spin_work(300); }
      return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now()-t0).count()/reps; };
    run(2000);
    // serial reference: same work without pool
    auto t0 = std::chrono::steady_clock::now();
    for (int r=0;r<20000;++r){ for(int i=0;i<items;++i) spin_work(iters); spin_work(300);} 
    double ser = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now()-t0).count()/20000;
    double best=1e9; for(int k=0;k<5;++k){ double v=run(20000); if(v<best)best=v; }
    printf("items %d iters/item %d: pool %.2f us/call, serial %.2f us/call, ideal(2 thr) %.2f\n", items, iters, best, ser, (ser-0.3)/2);
  }
}
