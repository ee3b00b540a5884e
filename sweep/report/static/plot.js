var sweepQueue=[];
function sweepPlot(id,fig){sweepQueue.push([id,fig]);}
function sweepDrawAll(){var i=0;
 function next(){if(i>=sweepQueue.length){document.body.setAttribute('data-plots','done');return;}
  var item=sweepQueue[i++],el=document.getElementById(item[0]);
  if(!window.Plotly){
   el.textContent='plotly.js is not loaded (offline? write the report with --plotlyjs inline).';next();return;}
  try{Plotly.newPlot(el,item[1].data,item[1].layout,{responsive:true,displaylogo:false})
   .then(function(){setTimeout(next,0);},function(e){console.error(e);next();});}
  catch(e){console.error(e);el.textContent='this plot failed: '+e;next();}}
 next();}
document.addEventListener('DOMContentLoaded',sweepDrawAll);
